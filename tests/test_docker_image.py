"""The image path without Docker (CI has none): the Dockerfile parses as Docker reads it (a small parser of
its instructions: line continuations, comments, parser directives, JSON forms, ARG/ENV scoping), the
build arguments make the CPU and CUDA variants, .dockerignore keeps environments and outputs out but the
files the image needs in, and every YAML that runs the image (cluster launcher, KubeRay RayJobs, RayService)
names the same image and an entrypoint that exists in it. Also: no deprecated KubeRay fields and no
deprecated Ray Data arguments in the source."""
from __future__ import annotations

import ast
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "EXPOSE",
                "LABEL", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}
JSON_FORM = {"CMD", "ENTRYPOINT", "RUN", "SHELL", "VOLUME", "COPY", "ADD"}
VAR = re.compile(r"\$(?:\{(\w+)(?::[-+][^}]*)?\}|(\w+))")


def parse_dockerfile(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) as Docker's parser reads them; raises ValueError on a malformed file."""
    lines = text.splitlines()
    out: list[tuple[int, str, str]] = []
    i, directives_open = 0, True
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            if directives_open and re.match(r"#\s*\w+\s*=", stripped):
                key = stripped[1:].split("=", 1)[0].strip().lower()
                if key not in ("syntax", "escape", "check"):
                    raise ValueError(f"line {i + 1}: unknown parser directive {key!r}")
            elif stripped:
                directives_open = False
            i += 1
            continue
        directives_open = False
        start, parts = i + 1, []
        while True:
            line = lines[i].rstrip()
            cont = line.endswith("\\")
            parts.append(line[:-1] if cont else line)
            i += 1
            if not cont:
                break
            while i < len(lines) and lines[i].strip().startswith("#"):  # comments inside a continuation
                i += 1
            if i >= len(lines):
                raise ValueError(f"line {start}: continuation at the end of the file")
        joined = " ".join(p.strip() for p in parts)
        word, _, args = joined.partition(" ")
        if word.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown instruction {word!r}")
        if not args.strip():
            raise ValueError(f"line {start}: {word} without arguments")
        args = args.strip()
        if word.upper() in JSON_FORM and args.startswith("["):
            value = json.loads(args)  # JSON form must be valid JSON (Docker falls back to shell form otherwise)
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"line {start}: {word} JSON form must be a list of strings")
        out.append((start, word.upper(), args))
    return out


def _kv(args: str) -> dict[str, str | None]:
    """ARG name[=default] / ENV k=v ... (shell-like words)."""
    out: dict[str, str | None] = {}
    for word in shlex.split(args):
        name, eq, value = word.partition("=")
        out[name] = value if eq else None
    return out


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def _sub(text: str, values: dict[str, str | None]) -> str:
    return VAR.sub(lambda m: values.get(m.group(1) or m.group(2)) or "", text)


def test_the_parser_rejects_what_docker_rejects():
    parse_dockerfile("# syntax=docker/dockerfile:1\nFROM a\nRUN a \\\n  # note\n  && b\nCMD [\"x\"]\n")
    for bad in ("FROM a\nRUNN x\n", "FROM a\nRUN a \\\n", "FROM a\nCMD [\"x\", 1]\n", "FROM a\nWORKDIR\n",
                "# bogus=1\nFROM a\n"):
        with pytest.raises((ValueError, json.JSONDecodeError)):
            parse_dockerfile(bad)


def test_dockerfile_instructions(dockerfile):
    words = [w for _, w, _ in dockerfile]
    first_from = words.index("FROM")
    assert set(words[:first_from]) <= {"ARG"}  # only ARGs before the first FROM
    assert words.count("FROM") == 1 and "ENTRYPOINT" not in words  # launcher runs `<image> bash`; KubeRay `ray start`
    global_args: dict[str, str | None] = {}
    for _, w, a in dockerfile[:first_from]:
        global_args.update(_kv(a))
    # build args: the Ray version the project pins, CPU by default, CUDA by --build-arg VARIANT=cu124
    assert global_args["RAY_VERSION"] == ray.__version__ and global_args["VARIANT"] == "cpu"
    base = dockerfile[first_from][2]
    assert _sub(base, global_args) == f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert _sub(base, {**global_args, "VARIANT": "cu124"}).endswith("-cu124")
    # every variable a later instruction uses is declared in the stage (ARG re-declared after FROM, or ENV)
    declared: set[str] = set()
    for line, w, a in dockerfile[first_from + 1:]:
        if w in ("ARG", "ENV"):
            declared |= set(_kv(a))
            continue
        for m in VAR.finditer(a):
            assert (m.group(1) or m.group(2)) in declared, f"line {line}: ${m.group(0)} is not declared in the stage"
    stage_args = {}
    for _, w, a in dockerfile[first_from + 1:]:
        if w == "ARG":
            stage_args.update(_kv(a))
    assert "VARIANT" in stage_args and stage_args["DEEPSPEED_VERSION"]
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = stage_args["EXTRAS"].split(",")
    assert set(wanted) <= set(extras), (wanted, sorted(extras))  # the extras the image installs exist
    closure = set(wanted) | {e.split("[", 1)[1].rstrip("]") for w in wanted for e in extras[w] if "unimat-dist[" in e}
    closure = {x.strip() for c in closure for x in c.split(",")}
    assert {"ray", "serve"} <= closure  # Ray Data/Train for the jobs, Ray Serve for the RayService
    runs = " ".join(a for _, w, a in dockerfile if w == "RUN")
    assert "download.pytorch.org/whl/${VARIANT}" in runs and "-e \".[${EXTRAS}]\"" in runs
    assert "requirements/lock-cpu.txt" in runs and (ROOT / "requirements" / "lock-cpu.txt").is_file()
    assert "python -m unimat_dist --help" in runs and "unimat --help" in runs  # both entry points checked at build
    lock = (ROOT / "requirements" / "lock-cpu.txt").read_text()
    assert f"deepspeed=={stage_args['DEEPSPEED_VERSION']}" in lock and f"ray=={ray.__version__}" in lock
    workdir = [a for _, w, a in dockerfile if w == "WORKDIR"]
    assert workdir == ["/home/ray/unimat-dist"]
    copies = [a for _, w, a in dockerfile if w in ("COPY", "ADD")]
    assert copies == ["--chown=ray:users . ."]
    cmd = json.loads([a for _, w, a in dockerfile if w == "CMD"][-1])
    assert cmd[:2] == ["unimat", "quickstart"]  # `docker run <image>` = the CPU quickstart


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here (later patterns win, ! re-includes)."""
    hit = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.strip("/")
        if any(fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p.split("/")[-1], pat[3:]))
               for p in prefixes):
            hit = not neg
    return hit


def test_dockerignore_keeps_environments_and_outputs_out_and_the_package_in():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    for out in (".venv/bin/python", "out/quickstart/report.md", ".git/HEAD", "unimat_dist/__pycache__/x.pyc",
                "unimat_dist.egg-info/PKG-INFO", ".pytest_cache/v", "results/cpu/x/samples.extxyz"):
        assert _ignored(out, patterns), out
    needed = ["pyproject.toml", "README.md", "requirements/lock-cpu.txt", "unimat_dist/__main__.py",
              "data_pipeline/job.py", "deploy/app.py", "cluster/jobs/train_mp20_ray.yaml",
              "cluster/jobs/ingest_gnome.yaml", "checkpoints/perov5_transformer_cpu.pt", "data/perov_5/val.csv.gz"]
    for keep in needed:
        assert (ROOT / keep).exists() and not _ignored(keep, patterns), keep


def _images_and_entrypoints():
    aws = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    images = {("cluster/aws-gpu.yaml", aws["docker"]["image"])}
    entrypoints = []
    docs = [(p, yaml.safe_load(p.read_text())) for p in sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))]
    docs.append((ROOT / "deploy" / "kuberay-rayservice.yaml",
                 yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())))
    for path, doc in docs:
        spec = doc["spec"]
        cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for g in groups:
            for c in g["template"]["spec"]["containers"]:
                images.add((str(path.relative_to(ROOT)), c["image"]))
        if doc["kind"] == "RayJob":
            entrypoints.append((path, spec["entrypoint"]))
    return images, entrypoints


def test_every_yaml_runs_the_same_image_built_from_the_dockerfile():
    images, _ = _images_and_entrypoints()
    names = {img for _, img in images}
    assert len(names) == 1, sorted(images)
    (image,) = names
    assert re.fullmatch(r"[\w./-]+/unimat-dist:[\w.]+-(cpu|cu\d+)", image), image
    variant = image.rsplit("-", 1)[1]
    # the documented build command produces exactly this tag
    build = f"docker build --build-arg VARIANT={variant} -t {image} ."
    assert build in (ROOT / "Dockerfile").read_text()
    assert build in (ROOT / "docs" / "cluster.md").read_text()


def test_rayjob_entrypoints_run_in_the_image():
    workdir = "/home/ray/unimat-dist"
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.strip().startswith("#")]
    from unimat_dist.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    _, entrypoints = _images_and_entrypoints()
    assert entrypoints
    for path, entry in entrypoints:
        args = shlex.split(entry)
        assert args[:3] == ["python", "-m", "unimat_dist"] and args[3] in commands, (path, entry)
        cfg = args[args.index("--config") + 1]
        assert cfg.startswith(workdir + "/"), (path, cfg)
        rel = cfg.removeprefix(workdir + "/")
        assert (ROOT / rel).is_file() and not _ignored(rel, ignore), (path, rel)


def test_rayservice_has_no_deprecated_fields_and_its_app_exists():
    doc = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())
    spec = doc["spec"]
    for deprecated in ("serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"):
        assert deprecated not in spec
    assert spec.get("upgradeStrategy", {}).get("type") in (None, "NewCluster", "None")
    serve = yaml.safe_load(spec["serveConfigV2"])
    for app in serve["applications"]:
        module, _, attr = app["import_path"].partition(":")
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
        assert f"def {attr}(" in source


def test_no_deprecated_ray_data_arguments_in_the_source():
    """Ray Data's ``concurrency=`` of map/map_batches/flat_map/filter is deprecated (Ray 2.51): use ``compute=``."""
    offenders = []
    for folder in ("unimat_dist", "data_pipeline", "deploy", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("map", "map_batches", "flat_map", "filter")
                        and any(k.arg == "concurrency" for k in node.keywords)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders
