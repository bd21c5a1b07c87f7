"""Shared datasets for the model tests.

The full-size simulation takes a few seconds and is used by several tests, so
it is cached as parquet under ``.factory/cache/`` in the repository root. The
cache key holds the simulation parameters, the simulator's source hash and the
numpy version (the published row order depends on numpy's sort), so a stale
file is never reused; a missing one is regenerated.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import simulator
from models.reference_features import add_reference_features

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".factory" / "cache"

MAIN_PARAMETERS: dict[str, object] = {
    "n_customers": 5000,
    "n_terminals": 10000,
    "nb_days": 183,
    "start_date": "2018-04-01",
    "r": 5,
    "seed_customers": 0,
    "seed_terminals": 1,
}

SMALL_PARAMETERS: dict[str, object] = {
    "n_customers": 200,
    "n_terminals": 400,
    "nb_days": 60,
    "start_date": "2018-04-01",
    "r": 5,
    "seed_customers": 0,
    "seed_terminals": 1,
}


def _cache_path(parameters: dict[str, object]) -> Path:
    source = Path(simulator.__file__).read_bytes()
    key = repr(sorted(parameters.items())).encode() + source + np.__version__.encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    return (
        CACHE_DIR
        / f"simulated_{parameters['n_customers']}c_{parameters['nb_days']}d_{digest}.parquet"
    )


def cached_simulation(parameters: dict[str, object]) -> pd.DataFrame:
    """Load a simulation from the cache, simulating and storing it when missing."""
    path = _cache_path(parameters)
    if path.exists():
        return pd.read_parquet(path)
    df = simulator.simulate(**parameters)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    df.to_parquet(partial, index=False)
    os.replace(partial, path)
    return df


@pytest.fixture(scope="session")
def main_transactions() -> pd.DataFrame:
    """The full-size raw dataset (main parameters of the handbook)."""
    return cached_simulation(MAIN_PARAMETERS)


@pytest.fixture(scope="session")
def main_features(main_transactions: pd.DataFrame) -> pd.DataFrame:
    """The full-size dataset with the 14 reference features."""
    return add_reference_features(main_transactions)


@pytest.fixture(scope="session")
def small_parameters() -> dict[str, object]:
    """Parameters of the small dataset: 200 customers, 400 terminals, 60 days."""
    return dict(SMALL_PARAMETERS)


@pytest.fixture(scope="session")
def small_transactions(small_parameters: dict[str, object]) -> pd.DataFrame:
    """A small simulated dataset; some customers have no terminal within r."""
    return simulator.simulate(**small_parameters)  # type: ignore[arg-type]
