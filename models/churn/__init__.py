"""The churn model as one package: its fixed protocol (:mod:`.protocol`), the model and
its federated form (:mod:`.model`, ``MODEL``), its use at a site (:mod:`.risk`), the
validation split its settings are tuned on (:mod:`.validation`) and its reference
baselines (:mod:`.baselines`).

Light on purpose (no torch): :data:`SITE_USE` is what the site's command line declares
without importing the model.
"""

from models.site_use import SiteUse

SITE_USE = SiteUse(
    model="churn",
    command="churn-risk",
    resource="churn-risk",
    summary="churn probability of every active customer, ranked, with the features behind it",
    ranks_customers=True,
)
