"""The hidden-width benchmark: the width it names is the width that trains."""

from __future__ import annotations

from lab.benchmarks.hidden_size import CURRENT, validation_scores
from lab.tuning import centralized_objective
from models.churn.model import HIDDEN_UNITS
from models.recommender.model import MLP_HIDDEN
from models.settings_per_epsilon import NON_PRIVATE, settings_for
from simulations.storefronts import assign_storefronts
from simulations.synthetic import generate_orders


def test_the_current_width_scores_as_the_model_itself_and_another_width_differs() -> None:
    orders = generate_orders(n_storefronts=2, n_customers=300, n_items=40, seed=4)
    frame = assign_storefronts(orders)
    assert CURRENT == {"recommender": MLP_HIDDEN[0], "churn": HIDDEN_UNITS}
    for model, other in (("churn", 2), ("recommender", 3)):
        for epsilon in (NON_PRIVATE, 8.0):
            entry = settings_for(model, "centralized", epsilon)
            default = centralized_objective(frame, model, epsilon, [0])(0, entry.settings)
            own = validation_scores(frame, model, epsilon, CURRENT[model], [0])
            assert own == [default[0][entry.metric]]
            assert own != validation_scores(frame, model, epsilon, other, [0])
