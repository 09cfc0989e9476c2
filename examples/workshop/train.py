"""Step 2 of the workshop: train a small PyTorch classifier on processed_data.csv, on the CPU.

    python train.py                 # reads processed_data.csv, writes model_weights.pt

The workshop submits this as a training job on a GPU cluster; here it takes a few seconds on the
CPU (fixed seed, full-batch Adam). The model keeps the feature mean and std as buffers, so it
takes raw readings such as [1, 2, 3] and its exported twins need no separate preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
FEATURES = ["sensor_a", "sensor_b", "sensor_c"]
SEED = 0
EPOCHS = 300


class WorkshopNet(nn.Module):
    """standardise -> Linear(3, 16) -> ReLU -> Linear(16, 16) -> ReLU -> Linear(16, 2) -> softmax"""

    def __init__(self, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(3) if mean is None else mean)
        self.register_buffer("std", torch.ones(3) if std is None else std)
        self.hidden1 = nn.Linear(3, 16)
        self.hidden2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 2)

    def logits(self, input: torch.Tensor) -> torch.Tensor:
        x = (input - self.mean) / self.std
        x = torch.relu(self.hidden1(x))
        x = torch.relu(self.hidden2(x))
        return self.head(x)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - Triton's input name
        """Class probabilities [P(label=0), P(label=1)] for a batch of raw readings [N, 3]."""
        return torch.softmax(self.logits(input), dim=-1)


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    data = pd.read_csv(HERE / "processed_data.csv")
    x = torch.tensor(data[FEATURES].to_numpy(), dtype=torch.float32)
    y = torch.tensor(data["label"].to_numpy(), dtype=torch.long)
    order = torch.randperm(len(x))
    split = int(0.8 * len(x))
    train, valid = order[:split], order[split:]
    model = WorkshopNet(x[train].mean(0), x[train].std(0))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, EPOCHS + 1):
        optimiser.zero_grad()
        loss = loss_fn(model.logits(x[train]), y[train])
        loss.backward()
        optimiser.step()
        if epoch % 50 == 0 or epoch == 1:
            with torch.no_grad():
                accuracy = (model.logits(x[valid]).argmax(1) == y[valid]).float().mean()
            print(f"epoch {epoch:3d}  loss {loss.item():.4f}  validation accuracy {accuracy:.3f}")
    torch.save(model.state_dict(), HERE / "model_weights.pt")
    print("wrote model_weights.pt")


if __name__ == "__main__":
    main()
