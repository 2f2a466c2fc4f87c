"""The next-basket recommender as one package: its fixed protocol (:mod:`.protocol`), the
repeat-buying features (:mod:`.features`), the model and its federated form (:mod:`.model`,
``MODEL``; layers in :mod:`.layers`), its use at a site (:mod:`.recommendations`), the
validation split its settings are tuned on (:mod:`.validation`) and its reference
baselines (:mod:`.baselines`).

Light on purpose (no torch): :data:`SITE_USE` is what the site's command line declares
without importing the model.
"""

from models.site_use import SiteUse

SITE_USE = SiteUse(
    model="recommender",
    command="recommend",
    resource="recommendations",
    summary="top-k next-basket items per customer, from their history and the global model",
    default_items=10,
)
