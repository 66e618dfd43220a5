"""Scale-out on a CPU host: virtual-device meshes, two processes on loopback,
SIGTERM preemption and --dry-run checks. Each case runs in subprocesses,
since JAX fixes the device count at import."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")


def env(devices):
  e = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu",
           PYTHONUNBUFFERED="1")
  e.pop("XLA_FLAGS", None)
  return e


def run_worker(tmp, name, meshes, devices, extra=(), check=True):
  out = tmp / f"{name}.json"
  proc = subprocess.run(
      [sys.executable, WORKER, str(out), str(tmp / name), meshes, *extra],
      cwd=ROOT, env=env(devices), capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()) if out.exists() else None


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("meshes")
  single = run_worker(tmp, "single", "1,1,1", 1)
  multi = run_worker(tmp, "multi", "8,1,1;2,2,2;1,4,2", 8)
  return tmp, single, multi


@pytest.mark.slow
def test_meshes_give_the_single_device_loss_curve(mesh_runs):
  _, single, multi = mesh_runs
  ref = np.array(single["1,1,1"]["losses"])
  assert len(ref) == 12
  for mesh in ("8,1,1", "2,2,2", "1,4,2"):
    assert multi[mesh]["devices"] == 8
    np.testing.assert_allclose(multi[mesh]["losses"], ref, rtol=1e-4,
                               err_msg=f"mesh {mesh}")


@pytest.mark.slow
def test_param_shardings_follow_the_rules(mesh_runs):
  _, _, multi = mesh_runs
  specs = multi["1,4,2"]["specs"]
  assert specs["['embed']['embedding']"] == str(("tensor", "fsdp"))
  assert specs["['layer_0']['wi_up']['kernel']"] == str(("fsdp", "tensor"))
  assert specs["['layer_0']['query']['kernel']"] == str(("fsdp", "tensor"))
  assert specs["['layer_0']['out']['kernel']"] == str(("tensor", "fsdp"))
  assert specs["['logits']['kernel']"] == str(("fsdp", "tensor"))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_and_checkpoint_restores(mesh_runs):
  tmp, _, multi = mesh_runs
  port = free_port()
  procs = []
  for pid in range(2):
    out = tmp / f"two_{pid}.json"
    procs.append(subprocess.Popen(
        [sys.executable, WORKER, str(out), str(tmp / "two"), "8,1,1",
         "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
         "--process_id", str(pid)],
        cwd=ROOT, env=env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  errors = [p.communicate(timeout=600)[1] for p in procs]
  for p, err in zip(procs, errors):
    assert p.returncode == 0, err[-3000:]
  two = json.loads((tmp / "two_0.json").read_text())["8,1,1"]
  assert two["processes"] == 2 and two["devices"] == 8
  np.testing.assert_allclose(two["losses"], multi["8,1,1"]["losses"],
                             rtol=1e-4)
  # The two-process checkpoint restores in a one-process, one-device run.
  proc = subprocess.run(
      [sys.executable, "-m", "ir_jax.cli", "train", "--config",
       "experiments/g2p.py:tiny", "--workdir", str(tmp / "two" / "8x1x1"),
       "--config.mesh.data=-1", "--config.total_steps=14",
       "--config.log_every=1", "--config.checkpoint_every=12",
       "--config.eval_every=1000"],
      cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resumed from step 12" in proc.stderr


@pytest.mark.slow
def test_sigterm_saves_and_rerun_resumes(tmp_path):
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "ir_jax.cli", "train", "--config",
         "experiments/g2p.py:tiny", "--workdir", str(wd),
         "--config.total_steps=100000", "--config.log_every=1",
         "--config.eval_every=100000", "--config.checkpoint_every=100000"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env(1), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = wd / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "Preempted at step" in out
  assert "Traceback" not in err, err[-3000:]   # A clean exit, no noise.
  saved = int(out.split("Preempted at step ")[1].split(";")[0])
  assert saved >= 3
  assert os.path.isdir(wd / "checkpoints" / str(saved))
  proc = subprocess.run(cmd[:-4] + [f"--config.total_steps={saved + 2}",
                                    "--config.log_every=1",
                                    "--config.eval_every=100000",
                                    "--config.checkpoint_every=100000"],
                        cwd=ROOT, env=env(1), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Resumed from step {saved}" in proc.stderr


@pytest.mark.parametrize("flags,message", [
    (["--config.mesh.data=3"], "has 3 devices but 8 are visible"),
    (["--config.mesh.data=-1", "--config.mesh.fsdp=3"], "do not divide"),
    (["--config.mesh.data=8", "--config.batch_size=20"],
     "does not divide over the batch axes"),
])
def test_dry_run_rejects_bad_mesh_and_batch(flags, message):
  proc = subprocess.run(
      [sys.executable, "-m", "ir_jax.cli", "train", "--config",
       "experiments/g2p.py:tiny", "--dry-run", *flags],
      cwd=ROOT, env=env(8), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert message in proc.stderr and "config." in proc.stderr


@pytest.mark.parametrize("spec", ["experiments/g2p.py:tiny",
                                  "experiments/g2p.py:small",
                                  "experiments/g2p.py:lstm,tiny"])
def test_dry_run_memory_estimate_within_20_percent(spec):
  from ir_jax import config as config_lib
  from ir_jax import aot
  report = aot.dry_run(config_lib.load(os.path.join(ROOT, spec)),
                         print_fn=lambda *a: None)
  assert report["xla_bytes"] > 0
  ratio = report["estimate_bytes"] / report["xla_bytes"]
  assert 0.8 <= ratio <= 1.2, ratio
