"""A fuzzer over the files neuron-spec reads from disk without having written them in this run:
doctor recordings (`doctor --from DIR`), compiled-artifact cache manifests (`cache list`,
`cache prune --broken`) and the upload hash memory. 2400 generated cases from real recordings
and real entries, mutated with hostile values: wrong types, NaN, 5000-digit numbers, 200 000-deep
JSON, Unicode digits, terminal escapes, FIFOs, links to /dev/zero, a 3 GB sparse file, 20 000
devices. Properties: never an internal error (exit 70) or a traceback, exits 0/1/2 only, no
escape sequence from a file reaches the terminal, each case within 5 s."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from neuron_spec.backends.artifacts import MANIFEST, ArtifactCache
from neuron_spec.cli.main import main
from neuron_spec.deploy.upload import HashCache

from .conftest import ROOT

RECORDING = ROOT / "tests" / "hosts" / "inf2.48xlarge-sdk2.25"
SECONDS_PER_CASE = 5.0
ESC = "\x1b[31mRED\x1b]0;title\x07"

VALUES: list[Any] = [
    "12a", None, float("nan"), float("inf"), -1, 0, 2**70, "9" * 5000, "²³", True, [], {},
    [1, [2, [3]]], "", ESC, "\u202eevil", 3.5, "x" * 100_000, {"nested": {"a": [None]}},
]  # fmt: skip
DEEP = "[" * 200_000 + "]" * 200_000
TEXT_VALUES = [
    "", "²³", "max", "9" * 5000, "-5", ESC, "\x00\x01\x02", "12a\n", DEEP, "1e400", "٣٤٥",
    "MemTotal: ²³ kB\nMemAvailable: 9999999999999999999999999 kB", "\xff" * 30,
]  # fmt: skip


def _json_text(value: Any) -> str:
    text = json.dumps(value, allow_nan=True)
    return text.replace('"__BIG__"', "9" * 5000)


def _mutate_devices(rng: random.Random, devices: list[dict[str, Any]]) -> str:
    devices = copy.deepcopy(devices)
    for _ in range(rng.randint(1, 4)):
        dev = rng.choice(devices)
        op = rng.random()
        if op < 0.5:
            dev[rng.choice(["nc_count", "neuron_device", "neuroncore_ids", "neuron_processes"])] = (
                copy.deepcopy(rng.choice([*VALUES, "__BIG__"]))
            )
        elif op < 0.8:
            procs = [
                {
                    "pid": rng.choice([123, "12a", None, -4, 2**70, float("nan"), "__BIG__"]),
                    "command": rng.choice(["python", ESC, 5, None, "neuron-ls"]),
                    "neuron_runtime_version": rng.choice(["2.20", ESC, [], 7]),
                }
                for _ in range(rng.randint(0, 3))
            ]
            dev["neuron_processes"] = procs if rng.random() < 0.8 else rng.choice(VALUES)
        else:
            dev.pop(rng.choice(list(dev)), None)
    if rng.random() < 0.1:
        return rng.choice([DEEP, "{", "[1, 2", json.dumps({"devices": devices}), "\xff\xfe"])
    return _json_text(devices)


def recordings(n: int, seed: int = 20261206) -> list[dict[str, str]]:
    """Each case: file name -> text, over the real inf2.48xlarge recording."""
    rng = random.Random(seed)
    base = {p.name: p.read_text() for p in RECORDING.iterdir()}
    devices = json.loads(base["neuron-ls.json"])
    pip = json.loads(base["pip-list.json"])
    cases = []
    for _ in range(n):
        case = dict(base)
        op = rng.random()
        if op < 0.45:
            case["neuron-ls.json"] = _mutate_devices(rng, devices)
        elif op < 0.6:
            entries = copy.deepcopy(pip)
            entry = rng.choice(entries)
            entry[rng.choice(["name", "version"])] = copy.deepcopy(rng.choice(VALUES))
            if rng.random() < 0.2:
                entries.append(rng.choice(VALUES))
            case["pip-list.json"] = _json_text(entries)
        else:
            name = rng.choice(
                ["memory.max", "meminfo", "df.txt", "driver-version", "dpkg.txt", "pip-list.json"]
            )
            case[name] = rng.choice(TEXT_VALUES)
        cases.append(case)
    return cases


def _check(rc: int, out: str, err: str, took: float, label: str) -> list[str]:
    bad = []
    if rc not in (0, 1, 2) or "internal error" in err or "Traceback" in err + out:
        bad.append(f"{label}: rc={rc} {err.strip()[-300:]}")
    if "\x1b" in out + err:
        bad.append(f"{label}: an escape sequence reached the terminal")
    if took > SECONDS_PER_CASE:
        bad.append(f"{label}: took {took:.1f} s")
    return bad


# Each campaign in chunks: the first is the fast loop's sample, the rest run in the full loop.
def campaign(n: int) -> list:
    return [pytest.param(i, marks=[pytest.mark.slow] if i else [], id=str(i)) for i in range(n)]


@pytest.mark.parametrize("chunk", campaign(4))
def test_doctor_survives_hostile_recordings(tmp_path, capsys, chunk):
    cases = recordings(1200)[chunk::4]
    failures: list[str] = []
    for i, case in enumerate(cases):
        d = tmp_path / f"r{i}"
        d.mkdir()
        for name, text in case.items():
            (d / name).write_text(text, encoding="utf-8", errors="surrogateescape")
        args = ["doctor", "--from", str(d)] + (["--json"] if i % 2 else [])
        start = time.perf_counter()
        rc = main(args)
        took = time.perf_counter() - start
        out, err = capsys.readouterr()
        failures += _check(rc, out, err, took, f"recording #{i}")
        shutil.rmtree(d)
    assert not failures, f"{len(failures)} of {len(cases)}:\n" + "\n".join(failures[:10])


def test_doctor_reads_no_huge_file_whole_and_20000_devices_in_linear_time(tmp_path, capsys):
    d = tmp_path / "huge"
    shutil.copytree(RECORDING, d)
    with (d / "neuron-ls.json").open("wb") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GB that occupies no disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    rc = main(["doctor", "--from", str(d), "--json"])
    took = time.perf_counter() - start
    body = json.loads(capsys.readouterr().out)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rc in (0, 1) and took < SECONDS_PER_CASE and grown_mb < 600
    assert any("more than the 16777216 allowed" in f["message"] for f in body["findings"])
    many = [
        {"neuron_device": i, "nc_count": 2, "neuron_processes": [{"pid": i, "command": "x"}]}
        for i in range(20_000)
    ]
    (d / "neuron-ls.json").write_text(json.dumps(many))
    start = time.perf_counter()
    assert main(["doctor", "--from", str(d), "--json"]) in (0, 1)
    assert time.perf_counter() - start < SECONDS_PER_CASE
    capsys.readouterr()


def test_a_fifo_or_a_link_to_dev_zero_in_a_recording_is_a_finding(tmp_path, capsys):
    d = tmp_path / "odd"
    shutil.copytree(RECORDING, d)
    (d / "meminfo").unlink()
    os.mkfifo(d / "meminfo")
    (d / "df.txt").unlink()
    (d / "df.txt").symlink_to("/dev/zero")
    start = time.perf_counter()
    rc = main(["doctor", "--from", str(d), "--json"])
    assert rc in (0, 1) and time.perf_counter() - start < SECONDS_PER_CASE
    said = json.dumps(json.loads(capsys.readouterr().out))
    assert "not a regular file" in said


# --- cache manifests ---------------------------------------------------------------------------

KEY = "0123456789abcdef01234567"


def _entry(root: Path) -> Path:
    cache = ArtifactCache(root)
    return cache.store(
        KEY,
        lambda d: (d / "model.neff").write_bytes(b"neff" * 100),
        {"role": "target", "model": "llama-2-7b"},
    )


def _manifest_case(rng: random.Random, entry: Path) -> None:
    path = entry / MANIFEST
    good = json.loads(path.read_text())
    op = rng.random()
    if op < 0.5:
        m = copy.deepcopy(good)
        where = rng.choice(["key", "created", "description", "files", "files.model.neff"])
        if where == "files.model.neff":
            m["files"]["model.neff"] = rng.choice([*VALUES, {"size": "400", "sha256": 5}])
        else:
            m[where] = copy.deepcopy(rng.choice(VALUES))
        if rng.random() < 0.3:
            m["files"] = (
                {"../../etc/passwd": {"size": 1, "sha256": "x"}}
                if rng.random() < 0.5
                else {"/abs": {}}
            )
        if rng.random() < 0.3:
            m["description"] = {"role": ESC, "model": "\u202e" + ESC, "deep": [[[]]]}
        path.write_text(_json_text(m))
    elif op < 0.7:
        path.write_text(rng.choice([DEEP, "{", "9" * 5000, "\xff", '{"files": ' + DEEP + "}"]))
    elif op < 0.8:
        path.unlink()
        rng.choice(
            [lambda: path.mkdir(), lambda: os.mkfifo(path), lambda: path.symlink_to("/dev/zero")]
        )()
    elif op < 0.9:
        (entry / "model.neff").unlink()
        rng.choice(
            [
                lambda: (entry / "model.neff").mkdir(),
                lambda: os.mkfifo(entry / "model.neff"),
                lambda: (entry / "model.neff").symlink_to("/etc/passwd"),
                lambda: None,
            ]
        )()
    else:
        with path.open("wb") as f:
            f.truncate(rng.choice([3 * 1024**3, 20 << 20]))


@pytest.mark.parametrize("chunk", campaign(4))
def test_cache_list_and_prune_survive_hostile_manifests(tmp_path, capsys, chunk):
    rng = random.Random(1000 + chunk)
    failures: list[str] = []
    for i in range(225):
        root = tmp_path / f"c{i}"
        entry = _entry(root)
        _manifest_case(rng, entry)
        for args in (
            ["cache", "list", "--dir", str(root)],
            ["cache", "list", "--dir", str(root), "--json"],
            ["cache", "prune", "--broken", "--dir", str(root), "--json"],
        ):
            start = time.perf_counter()
            rc = main(args)
            out, err = capsys.readouterr()
            failures += _check(rc, out, err, time.perf_counter() - start, f"#{i} {args[1]}")
        assert not (root / KEY).exists() or ArtifactCache(root).lookup(KEY) is not None
        shutil.rmtree(root)
    assert not failures, f"{len(failures)} cases:\n" + "\n".join(failures[:10])


def test_the_backends_lookup_counts_an_unreadable_entry_as_broken(tmp_path):
    entry = _entry(tmp_path)
    (entry / "model.neff").unlink()
    (entry / "model.neff").mkdir()  # read as a file: IsADirectoryError
    cache = ArtifactCache(tmp_path)
    assert cache.lookup(KEY) is None
    assert any("unusable" in w for w in cache.warnings) and not entry.exists()


# --- the upload hash memory --------------------------------------------------------------------


def _memory_case(rng: random.Random, target: Path) -> bytes:
    stat = target.stat()
    stamp: list[Any] = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    entry: dict[str, Any] = {"stamp": stamp, "sha256": "0" * 64}  # a lie, if it were believed
    op = rng.random()
    if op < 0.4:
        entry[rng.choice(["stamp", "sha256"])] = copy.deepcopy(rng.choice(VALUES))
        body: Any = {"version": 2, "files": {str(target): entry}, "uploads": {}}
    elif op < 0.6:
        body = {
            "version": rng.choice(VALUES),
            "files": rng.choice(VALUES),
            "uploads": rng.choice(VALUES),
        }
    elif op < 0.8:
        return rng.choice([DEEP.encode(), b"{", b"\xff\xfe", ("9" * 5000).encode(), b""])
    else:
        body = rng.choice(VALUES)
    return _json_text(body).encode("utf-8", "surrogatepass")


def test_the_upload_hash_memory_survives_hostile_state(tmp_path):
    rng = random.Random(7)
    target = tmp_path / "weights.bin"
    target.write_bytes(os.urandom(4096))
    truth = hashlib.sha256(target.read_bytes()).hexdigest()
    failures = []
    for i in range(300):
        memory = tmp_path / "upload-hashes.json"
        raw = _memory_case(rng, target)
        memory.write_bytes(raw)
        start = time.perf_counter()
        try:
            got = HashCache(memory).sha256(target)
        except Exception as exc:
            failures.append(f"#{i}: {type(exc).__name__}: {exc}"[:200])
            continue
        if got != truth:  # every case breaks the (lying) entry: none may be believed
            failures.append(f"#{i}: a corrupt memory was believed")
        if time.perf_counter() - start > SECONDS_PER_CASE:
            failures.append(f"#{i}: slow")
    assert not failures, "\n".join(failures[:10])


def test_a_link_out_of_a_cache_entry_is_never_hashed_or_mirrored(tmp_path):
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = SECRET")

    def write(d: Path) -> None:
        (d / "model.neff").write_bytes(b"neff")
        (d / "creds.neff").symlink_to(secret)

    cache = ArtifactCache(tmp_path / "cache")
    entry = cache.store(KEY, write, {})
    manifest = json.loads((entry / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["model.neff"]
