"""What runs at a storefront: ingest and validation of exports, the local data store,
the Flower ClientApp, local scoring with a global model, and ``fedshop-site``."""
