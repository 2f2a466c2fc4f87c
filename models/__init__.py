"""The models fedshop trains: one package per built-in model (``models/<name>/``), the
registry that finds any model by name, and what they share (schema, metrics, training
settings, site use). No Flower, no I/O policy."""

BUILTIN_MODELS: tuple[str, ...] = ("churn", "recommender")
"""The models shipped as packages ``models/<name>/``, in the order a run trains them by
default."""
