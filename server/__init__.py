"""The Flower ServerApp: strategy, update validation, checkpoints and resume,
federated evaluation, model export, certificates, and ``fedshop-server``."""
