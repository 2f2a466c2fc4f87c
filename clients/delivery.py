"""A site's answer to the server's model delivery: install the run's bundle, acknowledge.

At the end of a run the server sends every site the model bundle (:mod:`common.wire`,
"Model delivery"). :func:`install_delivered_bundle` installs it in the site directory,
verified in full first (:mod:`clients.model_store`: only models the site's own policy
allows, nothing imported before that, every checksum, weights that fit their models), and
acknowledges with the number of models installed; a bundle that does not check out, or a
site that cannot write it, refuses with error :data:`common.wire.INSTALL_FAILED` and the
reason, and keeps the model it had.
"""

from __future__ import annotations

from flwr.app import Context, Message

from clients.local_evaluation import write_local_evaluation
from clients.model_store import ModelStoreError, install_bundle
from clients.site_data import SiteDataError, load_orders, locate_site, storefront_of
from clients.site_task import SiteRefusal, reasoned, site_reply
from common import wire
from privacy.ledger import LedgerError


@reasoned
def install_delivered_bundle(msg: Message, context: Context) -> Message:
    """Install the bundle ``msg`` carries at this site and acknowledge it."""
    try:
        location = locate_site(context.node_config, context.run_config)
        record = msg.content.config_records.get(wire.BUNDLE)
        if record is None:
            raise ModelStoreError(f"the delivery message carries no '{wire.BUNDLE}' record")
        files = {name: bytes(data) for name, data in record.items()}
        installed = install_bundle(files, location.ledger_dir, "the delivered bundle")
        orders = load_orders(location)
        write_local_evaluation(installed, orders)
        storefront = storefront_of(location, orders)
    except (ModelStoreError, SiteDataError, LedgerError, OSError) as error:
        raise SiteRefusal(wire.INSTALL_FAILED, str(error)) from None
    metrics = {wire.MODELS_INSTALLED: len(installed.weights)}
    wire.check_keys("install reply", metrics, wire.INSTALL_REPLY_METRIC_KEYS)
    return site_reply(msg, storefront, metrics, {})
