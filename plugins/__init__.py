"""triton-deployer's built-in targets, each registered through the ``deployer.targets`` entry
points exactly as a third-party plugin would be."""
