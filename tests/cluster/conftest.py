import pytest

import hbctest


@pytest.fixture
def ca(tmp_path):
    return hbctest.CA(tmp_path)


@pytest.fixture(autouse=True)
def _stop_processes():
    yield
    hbctest.stop_all()
