"""A site's installed models: checksums, atomic installs, the ε the site itself spent, and
the site's answer to the server's model delivery (the real ClientApp handler); a bundle
from a hostile server is refused whole, before anything is written or imported, and a
bundle that does not load leaves the model in use as it was."""

import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from clients import client_app
from clients.model_store import (
    SITE_PRIVACY,
    ModelStoreError,
    current_file,
    install_bundle,
    install_bundle_dir,
    load_installed,
)
from clients.scoring import load_answers
from common import wire
from lab.sequential import server_message
from models.churn.model import CUTOFF
from models.recommender.model import CATALOGUE
from models.registry import BUILTIN_MODELS, get_model
from privacy.accountants import DPSegment
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from privacy.policy import SitePolicy
from server.bundle import export_bundle
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

PLUGIN = "tests.plugin_model"
"""A plug-in model (tests/plugin_model.py): installed only where the site's policy names it."""
FACTS = {
    "churn": {CUTOFF: "2011-09-10T00:00:00+00:00"},
    "recommender": {CATALOGUE: ["10001", "10002", "10003"]},
    PLUGIN: {},
}


def model_weights(model: str, scale: float = 1.0, facts: dict | None = None) -> dict:
    """``model``'s initial weights (built from ``facts``, by default its own) times ``scale``."""
    state = get_model(model).initial_weights(FACTS[model] if facts is None else facts)
    return {key: value * scale for key, value in state.items()}


def server_bundle(
    server_dir: Path,
    run: str,
    scale: float = 1.0,
    models: Iterable[str] = BUILTIN_MODELS,
    weights: dict[str, dict[str, np.ndarray]] | None = None,
) -> Path:
    """A real bundle as the ServerApp exports it, for a run directory named ``run``, of real
    registered models (``weights`` replaces some models' weights)."""
    models = list(models)
    state = {model: model_weights(model, scale) for model in models} | (weights or {})
    return export_bundle(
        server_dir / run,
        state,
        rounds_done={model: 3 for model in models},
        privacy={},
        run_config={"run-dir": str(server_dir / run), "num-server-rounds": 3},
        artefacts={model: get_model(model).artefacts(FACTS[model]) for model in models},
    )


def edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """``bundle`` with its manifest changed in place (it carries no checksum of its own)."""
    manifest = json.loads((bundle / wire.MANIFEST).read_text())
    edit(manifest)
    (bundle / wire.MANIFEST).write_text(json.dumps(manifest))
    return bundle


def with_weights_file(bundle: Path, model: str, data: bytes) -> Path:
    """``bundle`` with ``model``'s weights file replaced by ``data``, its checksum updated."""
    (bundle / f"{model}.npz").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    return edit_manifest(
        bundle, lambda m: m[wire.MANIFEST_MODELS][model].update({wire.SHA256: digest})
    )


def set_policy(site: Path, models: tuple[str, ...]) -> None:
    with PrivacyLedger(site / LEDGER_FILE) as ledger:
        ledger.set_policy(SitePolicy(models=models), set_by="test", reason="models")


def installed_runs(site: Path) -> list[str]:
    """Everything in ``models/``: no staging or replaced folder may be left behind."""
    return sorted(path.name for path in (site / "models").iterdir())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_bundle_installs_with_verified_checksums_and_becomes_current(tmp_path):
    bundle = server_bundle(tmp_path / "server", "run 'a'")
    site = tmp_path / "site"
    installed = install_bundle_dir(bundle, site)

    assert installed.run == "run-a" and installed.directory == site / "models" / "run-a"
    assert current_file(site).read_text() == "run-a\n"
    manifest = json.loads((bundle / wire.MANIFEST).read_text())
    assert (installed.directory / wire.MANIFEST).read_bytes() == (
        bundle / wire.MANIFEST
    ).read_bytes()
    for model, entry in manifest[wire.MANIFEST_MODELS].items():
        assert entry[wire.SHA256] == sha256(bundle / f"{model}.npz")
        assert sha256(installed.directory / f"{model}.npz") == entry[wire.SHA256]
        loaded = load_installed(site)
        for key, value in model_weights(model).items():
            np.testing.assert_array_equal(loaded.weights[model][key], value)
            np.testing.assert_array_equal(loaded.modules[model].state_dict()[key].numpy(), value)
    assert installed.facts["recommender"] == FACTS["recommender"]
    # a site that never trained spent nothing, and installing creates no ledger
    assert installed.site_privacy == {
        m: {wire.EPSILON: 0.0, wire.DELTA: 0.0, wire.DP_STEPS: 0} for m in BUILTIN_MODELS
    }
    assert not (site / LEDGER_FILE).exists()
    assert sorted(p.name for p in (site / "models").iterdir()) == ["current", "run-a"]


def test_the_epsilon_recorded_is_what_the_sites_own_ledger_spent(tmp_path):
    site = tmp_path / "site"
    with PrivacyLedger(site / LEDGER_FILE) as ledger:
        for server_round in (1, 2):
            reservation = ledger.reserve(
                "churn",
                DPSegment(sample_rate=0.1, noise_multiplier=1.1, steps=20),
                budget_epsilon=8.0,
                delta=1e-5,
                max_grad_norm=1.0,
                accountant="rdp",
                server_round=server_round,
            )
            ledger.commit(reservation, steps_taken=15)
        expected = ledger.epsilon("churn", 1e-5)
    installed = install_bundle_dir(server_bundle(tmp_path / "server", "run-a"), site)
    assert installed.site_privacy["churn"] == {
        wire.EPSILON: expected,
        wire.DELTA: 1e-5,
        wire.DP_STEPS: 30,
    }
    assert 0 < expected < 8.0
    assert installed.site_privacy["recommender"][wire.EPSILON] == 0.0
    on_disk = json.loads((installed.directory / SITE_PRIVACY).read_text())
    assert on_disk["churn"][wire.EPSILON] == expected


def test_a_tampered_or_incomplete_bundle_is_refused_and_the_site_keeps_its_model(tmp_path):
    site = tmp_path / "site"
    install_bundle_dir(server_bundle(tmp_path / "server", "run-a"), site)
    bundle = server_bundle(tmp_path / "server", "run-b", scale=2.0)
    weights = bytearray((bundle / "churn.npz").read_bytes())
    weights[-30] ^= 0xFF  # one flipped byte
    (bundle / "churn.npz").write_bytes(bytes(weights))
    with pytest.raises(ModelStoreError, match=r"churn.npz does not match its sha256.*in transit"):
        install_bundle_dir(bundle, site)
    (bundle / "churn.npz").unlink()
    with pytest.raises(ModelStoreError, match=r"the weights of churn \(churn.npz\) are missing"):
        install_bundle_dir(bundle, site)
    edit_manifest(
        bundle,
        lambda m: m[wire.MANIFEST_MODELS]["churn"].update({wire.WEIGHTS_FILE: "../../escape.npz"}),
    )
    with pytest.raises(ModelStoreError, match="no valid weights file name"):
        install_bundle_dir(bundle, site)
    with pytest.raises(ModelStoreError, match="not found; is .* a model bundle"):
        install_bundle_dir(tmp_path, site)
    # nothing half-installed: the run in use and the folders are as before
    assert load_installed(site).run == "run-a"
    assert installed_runs(site) == ["current", "run-a"]
    # an installed file changed afterwards is refused when loaded
    (site / "models" / "run-a" / "recommender.npz").write_bytes(b"not the weights")
    with pytest.raises(
        ModelStoreError, match="recommender.npz does not match its sha256.*changed on disk"
    ):
        load_installed(site)


def test_a_new_run_becomes_current_and_the_same_run_delivered_again_replaces_it(tmp_path):
    site, server = tmp_path / "site", tmp_path / "server"
    with pytest.raises(ModelStoreError, match="no model installed"):
        load_installed(site)
    install_bundle_dir(server_bundle(server, "run-a"), site)
    install_bundle_dir(server_bundle(server, "run-b", scale=3.0), site)
    assert load_installed(site).run == "run-b"
    again = install_bundle_dir(server_bundle(server, "run-a", scale=5.0), site)
    assert again.run == "run-a" and load_installed(site).run == "run-a"
    np.testing.assert_array_equal(
        again.weights["churn"]["output.bias"], model_weights("churn", 5.0)["output.bias"]
    )
    assert sorted(p.name for p in (site / "models").iterdir()) == ["current", "run-a", "run-b"]


def test_the_delivery_handler_installs_and_acknowledges_with_documented_keys(tmp_path):
    prepare_storefronts(
        generate_orders(n_storefronts=2, n_customers=30, n_items=10, seed=2), tmp_path / "split"
    )
    run_config = {"storefronts-dir": str(tmp_path / "split"), "run-dir": str(tmp_path / "run")}
    context = Context(1, 7, {"partition-id": 1}, RecordDict(), run_config)
    bundle = server_bundle(tmp_path / "server", "main")
    files = {path.name: path.read_bytes() for path in bundle.iterdir()}

    def deliver(files: dict[str, bytes]):
        content = RecordDict({wire.BUNDLE: ConfigRecord(files)})
        return client_app.install_model(
            server_message(content, f"query.{wire.INSTALL_MODEL}", 7), context
        )

    reply = deliver(files)
    assert not reply.has_error()
    assert dict(reply.content[wire.METRICS]) == {wire.MODELS_INSTALLED: 2}
    assert dict(reply.content[wire.SITE]) == {
        wire.STOREFRONT: "storefront-1",
        wire.PRIVACY_NOTE: "",
    }
    site = tmp_path / "run" / "sites" / "storefront-1"
    assert load_installed(site).run == "main"
    assert sha256(site / "models" / "main" / "churn.npz") == sha256(bundle / "churn.npz")

    forged = deliver({**files, SITE_PRIVACY: b'{"churn": {"epsilon": 0.0}}'})
    assert forged.has_error() and forged.error.code == wire.INSTALL_FAILED
    assert forged.error.reason == (
        "install-failed (storefront-1): the delivered bundle: files the manifest does not "
        "name: ['site-privacy.json']; refused"
    )
    files["recommender.npz"] = files["recommender.npz"][:-1] + b"\x01"
    refused = deliver(files)
    assert refused.has_error() and refused.error.code == wire.INSTALL_FAILED
    assert refused.error.reason.startswith(
        "install-failed (storefront-1): the delivered bundle: recommender.npz"
    )
    assert load_installed(site).run == "main" and installed_runs(site) == ["current", "main"]


HOSTILE = "hostile_pkg.model"
"""A module no test imports; importing it would leave a flag file beside it."""


@pytest.fixture
def hostile_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``hostile_pkg/model.py`` on ``sys.path``; the flag file its import would write."""
    package = tmp_path / "importable" / "hostile_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    flag = package / "imported"
    (package / "model.py").write_text(f"from pathlib import Path\nPath({str(flag)!r}).touch()\n")
    monkeypatch.syspath_prepend(str(package.parent))
    assert HOSTILE not in sys.modules and "json.tool" not in sys.modules
    return flag


def renamed(bundle: Path, model: str, to: str) -> Path:
    """``bundle`` with its entry of ``model`` renamed ``to`` (checksums still right)."""
    models = wire.MANIFEST_MODELS
    return edit_manifest(bundle, lambda m: m[models].update({to: m[models].pop(model)}))


@pytest.mark.parametrize("foreign", [HOSTILE, "json.tool"])
def test_a_model_the_sites_policy_does_not_allow_is_refused_and_never_imported(
    tmp_path, hostile_module, foreign
):
    site, server = tmp_path / "site", tmp_path / "server"
    install_bundle_dir(server_bundle(server, "run-a"), site)
    refusal = (
        rf"model {foreign} is not allowed by this site's policy "
        r"\(allowed: churn, recommender\); refusing the bundle"
    )
    bundle = renamed(server_bundle(server, "run-b"), "churn", foreign)
    with pytest.raises(ModelStoreError, match=refusal):
        install_bundle_dir(bundle, site)
    files = {path.name: path.read_bytes() for path in bundle.iterdir()}
    with pytest.raises(ModelStoreError, match=refusal):
        install_bundle(files, site, "the delivered bundle")
    # a policy that names a plug-in allows that one, not any module
    set_policy(site, ("churn", "recommender", PLUGIN))
    with pytest.raises(ModelStoreError, match=rf"model {foreign} is not allowed .*{PLUGIN}\)"):
        install_bundle_dir(bundle, site)
    assert load_installed(site).run == "run-a" and installed_runs(site) == ["current", "run-a"]

    # nor is it imported to score or serve, had the run in use been changed on disk
    renamed(site / "models" / "run-a", "churn", foreign)
    with pytest.raises(ModelStoreError, match=rf"model {foreign} is not allowed"):
        load_installed(site)
    with pytest.raises(ModelStoreError, match=rf"model {foreign} is not allowed"):
        load_answers(site)
    assert foreign not in sys.modules and "hostile_pkg" not in sys.modules
    assert not hostile_module.exists()


def test_a_plug_in_model_installs_where_the_sites_policy_names_it(tmp_path):
    site, server = tmp_path / "site", tmp_path / "server"
    bundle = server_bundle(server, "run-p", models=[PLUGIN, "churn"])
    with pytest.raises(ModelStoreError, match=rf"model {PLUGIN} is not allowed"):
        install_bundle_dir(bundle, site)
    assert not current_file(site).exists()

    set_policy(site, ("churn", PLUGIN))
    installed = install_bundle_dir(bundle, site)
    assert installed.run == "run-p" and sorted(installed.modules) == sorted([PLUGIN, "churn"])
    assert isinstance(installed.modules[PLUGIN], torch.nn.Linear)
    np.testing.assert_array_equal(
        load_installed(site).modules[PLUGIN].weight.detach().numpy(),
        model_weights(PLUGIN)["weight"],
    )
    # the site drops it from its policy: the run is no longer loaded
    set_policy(site, ("churn", "recommender"))
    with pytest.raises(ModelStoreError, match=rf"model {PLUGIN} is not allowed"):
        load_installed(site)


BREAKAGES = {
    # name: (a bundle of run-a with its checksums right that does not load, the refusal)
    "weights for another catalogue": (
        lambda server: server_bundle(
            server,
            "run-a",
            weights={"recommender": model_weights("recommender", facts={CATALOGUE: list("abcde")})},
        ),
        r"the weights of recommender do not fit the model \(RuntimeError: Error\(s\) in loading "
        r"state_dict for NextBasketRecommender: size mismatch for item_bias.bias",
    ),
    "a weight missing": (
        lambda server: server_bundle(
            server,
            "run-a",
            weights={
                "churn": {k: v for k, v in model_weights("churn").items() if "output" not in k}
            },
        ),
        r"the weights of churn do not fit the model \(RuntimeError: .*Missing key",
    ),
    "an unreadable npz": (
        lambda server: with_weights_file(server_bundle(server, "run-a"), "churn", b"not a zip"),
        r"run-a/bundle: churn.npz: not a weights file",
    ),
    "an entry without its artefacts": (
        lambda server: edit_manifest(
            server_bundle(server, "run-a"),
            lambda m: m[wire.MANIFEST_MODELS]["recommender"].pop(wire.ARTEFACTS),
        ),
        r"the weights of recommender do not fit the model \(KeyError: 'item-vocabulary'\)",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_bundle_that_does_not_load_leaves_the_previous_run_in_use(tmp_path, breakage):
    site, server = tmp_path / "site", tmp_path / "server"
    install_bundle_dir(server_bundle(server, "run-a"), site)
    install_bundle_dir(server_bundle(server, "run-b", scale=2.0), site)
    before = {p.name: p.read_bytes() for p in (site / "models" / "run-a").iterdir()}
    make, refusal = BREAKAGES[breakage]
    bad = make(tmp_path / "hostile")  # the same run name as an installed run, run-a
    with pytest.raises(ModelStoreError, match=refusal):
        install_bundle_dir(bad, site)
    # the run in use still loads, the run of that name is untouched, nothing left behind
    assert current_file(site).read_text() == "run-b\n"
    assert load_installed(site).run == "run-b"
    assert installed_runs(site) == ["current", "run-a", "run-b"]
    assert {p.name: p.read_bytes() for p in (site / "models" / "run-a").iterdir()} == before


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        *(
            (reserved, "is a name the site keeps for its own files")
            for reserved in (
                SITE_PRIVACY,
                "current",
                "models",
                wire.MANIFEST,
                LEDGER_FILE,
                f"{LEDGER_FILE}-wal",
                f"{LEDGER_FILE}-shm",
            )
        ),
        *(
            (invalid, "no valid weights file name")
            for invalid in ("../churn.npz", "sub/churn.npz", "sub\\churn.npz", "..", ".churn.npz")
        ),
        ("churn.pickle", "no valid weights file name"),
        ("churn\nx.npz", "no valid weights file name"),
        ("", "no valid weights file name"),
        (["churn.npz"], "no valid weights file name"),
    ],
)
def test_a_weights_file_name_must_be_plain_unreserved_and_the_bundles_own(tmp_path, name, refusal):
    site = tmp_path / "site"
    bundle = server_bundle(tmp_path / "server", "run-a")
    data = (bundle / "churn.npz").read_bytes()
    edit_manifest(
        bundle, lambda m: m[wire.MANIFEST_MODELS]["churn"].update({wire.WEIGHTS_FILE: name})
    )
    files = {name: data} if isinstance(name, str) else {}  # the manifest's, for manifest.json
    files |= {wire.MANIFEST: (bundle / wire.MANIFEST).read_bytes(), "recommender.npz": b""}
    with pytest.raises(ModelStoreError, match=f"the delivered bundle: model churn.*{refusal}"):
        install_bundle(files, site, "the delivered bundle")
    assert not (site / "models").exists()  # refused before anything was written


def test_two_models_may_not_share_a_weights_file(tmp_path):
    bundle = server_bundle(tmp_path / "server", "run-a")
    edit_manifest(
        bundle,
        lambda m: m[wire.MANIFEST_MODELS]["churn"].update({wire.WEIGHTS_FILE: "Recommender.npz"}),
    )
    with pytest.raises(ModelStoreError, match="two models share a weights file name"):
        install_bundle_dir(bundle, tmp_path / "site")
