#!/usr/bin/env python3
"""scripts/sweep on the CPU backend with the tiny Qwen2 model over (1,1), (2,1), (1,2), (2,2) and one
layout the model cannot take (3,1: 4 heads): the CSV has one measured row per layout and concurrency
with every request completed, the refused layout is recorded with the server's reason, and the PNG is
a PNG; a port taken between the sweep's choice and the server's bind is retried on another.
Usage: test_sweep.py BUILD_DIR"""
import contextlib
import csv
import importlib.machinery
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.abspath(sys.argv[1])
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    for extra in ([], ["--break-system-packages"]):
        if subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *extra, "matplotlib"],
                          capture_output=True).returncode == 0:
            return


def port_taken_meanwhile():
    """The port the sweep picked is taken by another program before the server binds it: the layout is
    started again on another port (not recorded as refused)."""
    loader = importlib.machinery.SourceFileLoader("sweep", os.path.join(ROOT, "scripts", "sweep"))
    sweep = types.ModuleType("sweep")
    sweep.__file__ = loader.path
    loader.exec_module(sweep)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = holder.getsockname()[1]
    picks = [held]
    real = sweep.free_port
    sweep.free_port = lambda: picks.pop(0) if picks else real()
    out = tempfile.mkdtemp(prefix="sweep-port-")
    a = types.SimpleNamespace(port=None, launcher=os.path.join(ROOT, "tests", "mpirun.sh") + " {np}",
                              llmserve=os.path.join(BUILD, "llmserve"),
                              model=os.path.join(BUILD, "test-models", "tiny-qwen2.h5"), startup_timeout=120,
                              extra=["--backend", "cpu", "--max-model-len", "128"])
    log = os.path.join(out, "tp1-pp1.log")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        proc, port = sweep.start_server(a, "tp1-pp1", 1, 1, log)
    holder.close()
    try:
        check("port taken meanwhile: started again on another port",
              proc is not None and port != held, buf.getvalue())
        check("port taken meanwhile: said so", "taken meanwhile" in buf.getvalue(), buf.getvalue())
    finally:
        if proc is not None:
            sweep.stop(proc)
        shutil.rmtree(out, ignore_errors=True)


def main():
    ensure_matplotlib()
    out = tempfile.mkdtemp(prefix="sweep-")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "sweep"), "--gpus", "4", "--layouts", "1x1,2x1,1x2,2x2,3x1",
           "--model", os.path.join(BUILD, "test-models", "tiny-qwen2.h5"), "--llmserve", os.path.join(BUILD, "llmserve"),
           "--launcher", os.path.join(ROOT, "tests", "mpirun.sh") + " {np}", "--concurrency", "1,4",
           "--num-prompts", "8", "--input-len", "16", "--output-len", "8", "--out-dir", out,
           "--", "--backend", "cpu", "--max-model-len", "128"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    print(r.stdout[-2000:])
    check("sweep exits 0", r.returncode == 0, r.stderr[-1000:])
    with open(os.path.join(out, "sweep.csv")) as f:
        rows = list(csv.DictReader(f))
    measured = {(r["tp"], r["pp"], r["concurrency"]): r for r in rows if r["status"] == "ok"}
    want = {(tp, pp, c) for tp, pp in (("1", "1"), ("2", "1"), ("1", "2"), ("2", "2")) for c in ("1", "4")}
    check("CSV: a measured row for each of the 4 layouts x 2 concurrencies", set(measured) == want, sorted(measured))
    check("CSV: every request completed, none failed, throughput > 0",
          all(r["completed"] == "8" and r["failed"] == "0" and float(r["output_throughput"]) > 0 for r in measured.values()),
          list(measured.values())[:1])
    refused = [r for r in rows if r["tp"] == "3"]
    check("CSV: the layout the model cannot take is recorded with the reason",
          len(refused) == 1 and refused[0]["status"] == "refused" and "3" in refused[0]["error"], refused)
    png = os.path.join(out, "sweep.png")
    try:
        import matplotlib  # noqa: F401
        with open(png, "rb") as f:
            check("PNG plot written", f.read(8) == b"\x89PNG\r\n\x1a\n")
    except ImportError:
        check("matplotlib could not be installed: the sweep says so", "matplotlib is not installed" in r.stderr, r.stderr)
    for n in ("tp1-pp1-c1.json", "tp2-pp2-c4.json", "tp2-pp2.log"):
        check(f"kept {n}", os.path.exists(os.path.join(out, n)))
    shutil.rmtree(out, ignore_errors=True)
    port_taken_meanwhile()
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
