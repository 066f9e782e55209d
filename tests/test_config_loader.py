"""The strict YAML -> dataclass loader shared by every config in the project."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from unimat_dist.config import ConfigError, load_config, save_config, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4  # 1/step
    betas: tuple[float, float] = (0.9, 0.99)


@dataclass(frozen=True)
class Cfg:
    name: str
    trainer: Literal["local", "ray"] = "local"
    steps: int = 10
    elements: Optional[list[str]] = None
    optim: Optim = field(default_factory=Optim)


def test_load_yaml_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: run1\nsteps: 5\noptim:\n  lr: 0.001\n")
    cfg = load_config(Cfg, p, ["optim.lr=3e-4", "trainer=ray", "elements=[C]"])
    assert cfg == Cfg("run1", "ray", 5, ["C"], Optim(3e-4))
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Cfg, tmp_path / "out.yaml") == cfg
    assert to_dict(cfg)["optim"] == {"lr": 3e-4, "betas": [0.9, 0.99]}


@pytest.mark.parametrize(
    "text,overrides,msg",
    [
        ("name: a\nstepz: 3\n", [], "unknown config key\\(s\\): stepz"),
        ("name: a\noptim:\n  lr: 1\n  momentum: 2\n", [], "in section 'optim': momentum"),
        ("name: a\ntrainer: slurm\n", [], "trainer: 'slurm' is not one of \\['local', 'ray'\\]"),
        ("name: a\nsteps: many\n", [], "steps: expected an integer"),
        ("steps: 3\n", [], "missing required config key\\(s\\): name"),
        ("name: a\n", ["optim.betas=[0.9]"], "optim.betas: expected 2 items"),
        ("name: a\n", ["oops"], "must look like section.key=value"),
        ("- 1\n- 2\n", [], "top level must be a mapping"),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, msg):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(Cfg, p, overrides)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(Cfg, "/nonexistent/x.yaml")
