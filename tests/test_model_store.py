"""A site's installed models: checksums, atomic installs, the ε the site itself spent, and
the site's answer to the server's model delivery (the real ClientApp handler)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from clients import client_app
from clients.model_store import (
    SITE_PRIVACY,
    ModelStoreError,
    current_file,
    install_bundle_dir,
    load_installed,
)
from privacy import wire
from privacy.accountants import DPSegment
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from server.bundle import export_bundle
from simulations.sequential import server_message
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

WEIGHTS = {
    "first": {"weight": np.arange(6, dtype=np.float32).reshape(2, 3)},
    "second": {"bias": np.ones(4, dtype=np.float32)},
}


def server_bundle(server_dir: Path, run: str, scale: float = 1.0) -> Path:
    """A real bundle as the ServerApp exports it, for a run directory named ``run``."""
    weights = {m: {k: v * scale for k, v in state.items()} for m, state in WEIGHTS.items()}
    return export_bundle(
        server_dir / run,
        weights,
        rounds_done={"first": 3, "second": 3},
        privacy={},
        run_config={"run-dir": str(server_dir / run), "num-server-rounds": 3},
    )


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
        for key, value in WEIGHTS[model].items():
            np.testing.assert_array_equal(load_installed(site).weights[model][key], value)
    # a site that never trained spent nothing, and installing creates no ledger
    assert installed.site_privacy == {
        m: {wire.EPSILON: 0.0, wire.DELTA: 0.0, wire.DP_STEPS: 0} for m in WEIGHTS
    }
    assert not (site / LEDGER_FILE).exists()
    assert sorted(p.name for p in (site / "models").iterdir()) == ["current", "run-a"]


def test_the_epsilon_recorded_is_what_the_sites_own_ledger_spent(tmp_path):
    site = tmp_path / "site"
    with PrivacyLedger(site / LEDGER_FILE) as ledger:
        for server_round in (1, 2):
            reservation = ledger.reserve(
                "first",
                DPSegment(sample_rate=0.1, noise_multiplier=1.1, steps=20),
                budget_epsilon=8.0,
                delta=1e-5,
                max_grad_norm=1.0,
                accountant="rdp",
                server_round=server_round,
            )
            ledger.commit(reservation, steps_taken=15)
        expected = ledger.epsilon("first", 1e-5)
    installed = install_bundle_dir(server_bundle(tmp_path / "server", "run-a"), site)
    assert installed.site_privacy["first"] == {
        wire.EPSILON: expected,
        wire.DELTA: 1e-5,
        wire.DP_STEPS: 30,
    }
    assert 0 < expected < 8.0
    assert installed.site_privacy["second"][wire.EPSILON] == 0.0
    on_disk = json.loads((installed.directory / SITE_PRIVACY).read_text())
    assert on_disk["first"][wire.EPSILON] == expected


def test_a_tampered_or_incomplete_bundle_is_refused_and_the_site_keeps_its_model(tmp_path):
    site = tmp_path / "site"
    install_bundle_dir(server_bundle(tmp_path / "server", "run-a"), site)
    bundle = server_bundle(tmp_path / "server", "run-b", scale=2.0)
    weights = bytearray((bundle / "first.npz").read_bytes())
    weights[-30] ^= 0xFF  # one flipped byte
    (bundle / "first.npz").write_bytes(bytes(weights))
    with pytest.raises(ModelStoreError, match=r"first.npz does not match its sha256"):
        install_bundle_dir(bundle, site)
    (bundle / "first.npz").unlink()
    with pytest.raises(ModelStoreError, match=r"the weights of first \(first.npz\) are missing"):
        install_bundle_dir(bundle, site)
    manifest = json.loads((bundle / wire.MANIFEST).read_text())
    manifest[wire.MANIFEST_MODELS]["first"][wire.WEIGHTS_FILE] = "../../escape.npz"
    (bundle / wire.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelStoreError, match="no valid weights file name"):
        install_bundle_dir(bundle, site)
    with pytest.raises(ModelStoreError, match="not found; is .* a model bundle"):
        install_bundle_dir(tmp_path, site)
    # nothing half-installed: the run in use and the folders are as before
    assert load_installed(site).run == "run-a"
    assert sorted(p.name for p in (site / "models").iterdir()) == ["current", "run-a"]
    # an installed file changed afterwards is refused when loaded
    (site / "models" / "run-a" / "second.npz").write_bytes(b"not the weights")
    with pytest.raises(ModelStoreError, match="second.npz: missing or not matching its sha256"):
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
    np.testing.assert_array_equal(again.weights["second"]["bias"], 5.0 * np.ones(4))
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
    assert sha256(site / "models" / "main" / "first.npz") == sha256(bundle / "first.npz")

    files["second.npz"] = files["second.npz"][:-1] + bytes([files["second.npz"][-1] ^ 0xFF])
    refused = deliver(files)
    assert refused.has_error() and refused.error.code == wire.INSTALL_FAILED
    assert refused.error.reason.startswith(
        "install-failed (storefront-1): the delivered bundle: second.npz"
    )
