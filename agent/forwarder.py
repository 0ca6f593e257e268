"""Upload sealed spool files to the store, record each upload, then delete the spool file.

A crash between the upload and the delete uploads the file again under the same name, which
replaces the object: the store never holds two copies of a batch.
"""

from __future__ import annotations

import logging
import os

from . import spool
from .checkpoint import CheckpointStore
from .store import Store, StoreError, upload_file

log = logging.getLogger(__name__)


def forward_pending(state_dir: str, store: Store, checkpoints: CheckpointStore) -> int:
    """Upload every sealed spool file once; return how many were uploaded.

    Raises StoreError on the first failure, leaving that file and the rest in the spool.
    """
    uploaded = 0
    root = spool.spool_root(state_dir)
    for relative in spool.pending(state_dir):
        local = os.path.join(root, relative)
        try:
            size = upload_file(store, local, relative)
        except StoreError as exc:
            checkpoints.set_status("last_error", str(exc))
            raise
        checkpoints.record_upload(relative, size)
        os.unlink(local)
        uploaded += 1
        log.info("uploaded %s (%d bytes) to %s", relative, size, store.url)
    return uploaded
