"""The simulator as a named detached Ray actor, so that a fleet started with ``up --detach`` keeps
its exchange after the driver exits. Keys are read from key files inside the actor (paths travel as
arguments, never the keys themselves)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import ray
import yaml

from fleet import yamlfile

SIM_ACTOR = "sim"


def sim_key_file(state_dir: str, fleet_name: str, account: str) -> Path:
    return Path(state_dir).absolute() / f"{fleet_name}.{account}.sim-keys.yaml"


def write_sim_keys(path: Path) -> Path:
    """Fresh random keys for one simulated account, in a file only this user can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({"api_key": secrets.token_hex(32), "api_secret": secrets.token_hex(32)}, fh)
    os.chmod(path, 0o600)
    return path


@ray.remote(num_cpus=0, max_restarts=0)
class SimHost:
    """Runs ``fleet.sim.server.SimServer`` on the actor's event loop until ``stop``."""

    def __init__(self, symbols: list[str], seed: int, host: str, port: int, key_files: dict[str, str],
                 config_path: str | None = None) -> None:
        self.args = (list(symbols), int(seed), host, int(port), dict(key_files), config_path)
        self.server: Any = None

    async def start(self) -> dict[str, Any]:
        """Start once (idempotent) and return where it listens."""
        if self.server is None:
            from fleet.sim.config import AccountSpec, load_sim_config
            from fleet.sim.server import SimServer

            symbols, seed, host, port, key_files, config_path = self.args
            config = load_sim_config(config_path)
            accounts = []
            for name, path in key_files.items():
                keys = yamlfile.read(path)
                accounts.append(AccountSpec(name=name, api_key=keys["api_key"], api_secret=keys["api_secret"]))
            config = config.model_copy(update={"accounts": tuple(accounts)})
            self.server = await SimServer(symbols=symbols, seed=seed, host=host, port=port, config=config).start()
        return {"rest_url": self.server.rest_url, "ws_url": self.server.ws_url}

    async def stop(self) -> bool:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        return True
