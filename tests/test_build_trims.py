"""What build.spec changes in the bundle besides removing files still works where the app uses it.

The frozen build ships botocore's endpoint table gzipped (``botocore/data/endpoints.json.gz``, no
``.json``): botocore must find it there and resolve an S3 endpoint from it (the S3 storage backend).
tests/test_installer.py checks that the frozen build holds it that way.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

botocore_loaders = pytest.importorskip("botocore.loaders")


def test_botocore_reads_its_endpoint_table_gzipped(tmp_path: Path) -> None:
    import botocore
    import botocore.session

    builtin = Path(botocore.__file__).parent / "data"
    original = json.loads((builtin / "endpoints.json").read_text(encoding="utf-8"))
    (tmp_path / "endpoints.json.gz").write_bytes(
        gzip.compress((builtin / "endpoints.json").read_bytes(), compresslevel=9, mtime=0)
    )
    loader = botocore_loaders.Loader(extra_search_paths=[str(tmp_path)], include_default_search_paths=False)
    data, path = loader.load_data_with_path("endpoints")
    assert path == str(tmp_path / "endpoints")
    assert data == original

    # A session whose only endpoint table is the gzipped one still builds an S3 client on it.
    session = botocore.session.get_session()
    full = botocore_loaders.Loader(extra_search_paths=[str(tmp_path)])
    session.register_component("data_loader", full)
    assert full.load_data_with_path("endpoints")[1] == str(tmp_path / "endpoints")
    client = session.create_client(
        "s3", region_name="eu-central-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    assert client.meta.endpoint_url == "https://s3.eu-central-1.amazonaws.com"
