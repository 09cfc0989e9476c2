"""Train two small Neural Collaborative Filtering models on synthetic interactions, on the CPU.

    python train.py                 # writes weights/ncf_food_model.pt, weights/ncf_fashion_model.pt

The SageMaker workshop trains NCF on a recommendation data set on a GPU. Here each domain (food,
fashion) gets its own synthetic users x items data: hidden tastes decide which items a user
interacts with; for every interaction two items the user did not touch are sampled as
negatives. A few epochs of embeddings + MLP learn to score (user, item) pairs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DOMAINS = {  # model name -> (users, items, seed)
    "ncf_food_model": (300, 120, 1),
    "ncf_fashion_model": (300, 200, 2),
}
EPOCHS = 10
NEGATIVES = 2


class NCF(nn.Module):
    """score(user, item) = sigmoid(MLP([user embedding, item embedding, their product]))"""

    def __init__(self, users: int, items: int, dim: int = 8, hidden: int = 32):
        super().__init__()
        self.user_embedding = nn.Embedding(users, dim)
        self.item_embedding = nn.Embedding(items, dim)
        self.fc1 = nn.Linear(3 * dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden // 2)
        self.out = nn.Linear(hidden // 2, 1)

    def logits(self, user_id: torch.Tensor, item_id: torch.Tensor) -> torch.Tensor:
        u, i = self.user_embedding(user_id), self.item_embedding(item_id)
        x = torch.cat([u, i, u * i], dim=-1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.out(x)

    def forward(self, user_id: torch.Tensor, item_id: torch.Tensor) -> torch.Tensor:
        """user_id, item_id: INT64 [N, 1] -> score FP32 [N, 1] (Triton's shapes)."""
        return torch.sigmoid(self.logits(user_id.squeeze(-1), item_id.squeeze(-1)))


def interactions(users: int, items: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user_id, item_id, label) with 1 for an interaction and 0 for a sampled negative."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(users, 4))
    style = rng.normal(size=(items, 4))
    affinity = taste @ style.T + rng.normal(scale=0.5, size=(users, items))
    liked = np.argsort(-affinity, axis=1)[:, :30]                    # 30 interactions per user
    pos_u = np.repeat(np.arange(users), liked.shape[1])
    pos_i = liked.reshape(-1)
    seen = np.zeros((users, items), dtype=bool)
    seen[pos_u, pos_i] = True
    neg_u = np.repeat(pos_u, NEGATIVES)
    neg_i = rng.integers(0, items, size=len(neg_u))
    keep = ~seen[neg_u, neg_i]
    user = np.concatenate([pos_u, neg_u[keep]])
    item = np.concatenate([pos_i, neg_i[keep]])
    label = np.concatenate([np.ones(len(pos_u)), np.zeros(int(keep.sum()))]).astype(np.float32)
    return user, item, label


def train(name: str, users: int, items: int, seed: int) -> NCF:
    torch.manual_seed(seed)
    user, item, label = (torch.from_numpy(a) for a in interactions(users, items, seed))
    order = torch.randperm(len(user))
    split = int(0.9 * len(order))
    tr, va = order[:split], order[split:]
    model = NCF(users, items)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    print(f"{name}: {users} users, {items} items, {len(user)} interactions (incl. negatives)")
    for epoch in range(1, EPOCHS + 1):
        model.train()
        total = 0.0
        for batch in tr[torch.randperm(len(tr))].split(256):
            optimiser.zero_grad()
            loss = loss_fn(model.logits(user[batch], item[batch]).squeeze(-1), label[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            scores = model.logits(user[va], item[va]).squeeze(-1)
        pos, neg = scores[label[va] == 1], scores[label[va] == 0]
        auc = (pos[:, None] > neg[None, :]).float().mean()   # P(a liked item outranks another)
        print(f"  epoch {epoch}  loss {total / len(tr):.4f}  validation AUC {auc:.3f}")
    return model


def main() -> None:
    torch.set_num_threads(2)
    out = HERE / "weights"
    out.mkdir(exist_ok=True)
    for name, (users, items, seed) in DOMAINS.items():
        model = train(name, users, items, seed)
        torch.save(model.state_dict(), out / f"{name}.pt")
    print(f"wrote {', '.join(f'weights/{n}.pt' for n in DOMAINS)}")


if __name__ == "__main__":
    main()
