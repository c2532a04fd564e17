"""scripts/gpu_study.sh on CPU, without its install step and without training.

The script's own code runs: the venv made from this test's python (itself a venv, as the GPU machine's python3
is), its folders and nnU-Net variables, the phantom, the deadline, the command lines of the study and cost
commands (the real `nnUNetv2_stipple_study`), the report and the packed record. Faked (tests/scripts/
gpu_study_fakes.py): nnUNetv2_plan_and_preprocess and nnUNetv2_train (first on PATH) and the measuring
subprocesses of the cost benchmark (a .pth file of the venv)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
from importlib.metadata import version
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[1] / "scripts" / "gpu_study.sh"
DS = "Dataset990_STIPPLEPhantom"


def _run(args, env, timeout=300):
    """The script in its own process group (the whole group is killed if it hangs)."""
    proc = subprocess.Popen(["bash", str(SCRIPT), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"gpu_study.sh {' '.join(map(str, args))} did not end within {timeout} s:\n"
                    f"{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _fake_bin(folder: Path) -> Path:
    folder.mkdir()
    for tool, func in (("nnUNetv2_plan_and_preprocess", "plan_and_preprocess"), ("nnUNetv2_train", "train")):
        f = folder / tool
        f.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(HERE)!r})\nimport gpu_study_fakes\n"
                     f"sys.exit(gpu_study_fakes.{func}(sys.argv[1:]))\n")
        f.chmod(0o755)
    return folder


def test_help_and_bad_arguments(tmp_path):
    env = dict(os.environ)
    r = _run(["--help"], env)
    assert r.returncode == 0 and "install" in r.stdout and "--deadline" in r.stdout
    for bad, message in ((["--device", "gpu", "venv"], "--device must be cuda or cpu"),
                         (["--work", tmp_path, "fly"], "unknown option or step 'fly'"),
                         (["--work", tmp_path], "no step given"),
                         (["--work", tmp_path, "--name", "a/b", "collect"], "--name may hold")):
        r = _run(bad, env)
        assert r.returncode == 2 and message in r.stderr, (bad, r.stderr)
    assert not (tmp_path / "logs").exists()


@pytest.mark.e2e     # runs the script's steps (install, data, study, collect) with fakes: about 30 s
def test_steps_on_cpu_with_fakes(tmp_path):
    work, out, calls_file = tmp_path / "work", tmp_path / "out", tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "nnUNet_extTrainer")}
    env.update(PATH=f"{_fake_bin(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
               GPU_STUDY_FAKE_LOG=str(calls_file),
               nnUNet_raw="/nonexistent", nnUNet_preprocessed="/nonexistent", nnUNet_results="/nonexistent")
    common = ["--work", work, "--bundle", tmp_path / "no_bundle", "--python", sys.executable, "--device", "cpu",
              "--phantom", "--phantom-args", "--num-labeled 8 --num-unlabeled 0 --shape 16 24 24", "--np", "1",
              "--cost-args", "--iterations 3 --warmup 1 --repeats 1 --cases 1", "--name", "phantom_cpu", "--out", out]

    # the environment: a venv that sees this python's packages although this python is a venv itself
    r = _run(common + ["venv"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    venv_python = work / "venv" / "bin" / "python"
    site = subprocess.run([str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert Path(site).is_relative_to(work / "venv")
    assert Path(sysconfig.get_paths()["purelib"]).as_posix() in (Path(site) / "_gpu_study_host.pth").read_text()
    assert f"torch {version('torch')} from " in r.stdout
    (Path(site) / "zz_gpu_study_fakes.pth").write_text(
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import gpu_study_fakes; gpu_study_fakes.install_cost_hook()\n")

    # data, then a deadline that leaves no time: cost and study are skipped, nothing fails
    r = _run(common + ["--deadline", "1", "data", "cost", "study"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== cost: skipped" in r.stdout and "== study: skipped" in r.stdout
    assert "run the steps 'study collect' again" in r.stdout
    pre = work / "nnUNet_preprocessed" / DS
    assert (pre / "nnUNetPlans.json").is_file() and (work / "nnUNet_raw" / DS / "dataset.json").is_file()

    # a checkpoint cut short by an interruption is set aside, so that nnU-Net's --c does not fail on it
    cut = work / "study/runs/10/plain" / DS / "nnUNetTrainer_LabelProportion__nnUNetPlans__2d/fold_0"
    cut = cut / "checkpoint_latest.pth"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(b"PK\x03\x04 cut short")
    r = _run(common + ["data", "cost", "study", "collect"], env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert f"data: {DS} 2d preprocessed already" in r.stdout
    assert "checkpoint_latest.pth is unreadable" in r.stdout
    assert cut.with_name("checkpoint_latest.pth.unreadable").is_file()
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]

    prep = [c for c in calls if c["tool"] == "plan_and_preprocess"]
    assert [c["argv"] for c in prep] == [["-d", "990", "-c", "2d", "-np", "1", "-npfp", "1"]]
    assert prep[0]["nnUNet_preprocessed"] == str(work / "nnUNet_preprocessed")

    workers = [c for c in calls if c["tool"] == "cost_worker"]
    assert sorted((c["kind"], c["method"]) for c in workers) == [
        ("prediction", "plain"), ("prediction", "stipple"), ("prior", "stipple"), ("training", "plain"),
        ("training", "stipple")]
    assert {(c["args"]["device"], c["args"]["configuration"], c["args"]["plans"], c["args"]["dataset"])
            for c in workers} == {("cpu", "2d", "nnUNetPlans", DS)}
    assert next(c for c in workers if c["kind"] == "training")["args"]["iterations"] == 3
    # nnU-Net looks trainers up in the study process too (cost, positioning quality): nnUNet_extTrainer is set there
    assert all(c["nnUNet_extTrainer"] and c["nnUNet_extTrainer"].endswith("nnunet_ext") for c in workers)

    trains = [c for c in calls if c["tool"] == "train"]
    runs = [Path(c["nnUNet_results"]).relative_to(work / "study" / "runs").as_posix() for c in trains]
    assert runs == ["10/plain", "10/stipple_norelab", "100/plain", "100/stipple_norelab"]   # gpu-2d: alpha 10 first
    for c in trains:
        assert c["argv"][:3] == [DS, "2d", "0"] and c["argv"][-2:] == ["-device", "cpu"]
        assert c["argv"][c["argv"].index("-p") + 1] == "nnUNetPlans" and "--c" in c["argv"]
        assert c["nnUNet_compile"] == "f" and c["nnUNet_extTrainer"].split(os.pathsep)[0].endswith("nnunet_ext")
        assert (c["run_config"]["num_epochs"], c["run_config"]["num_iterations_per_epoch"]) == (10, 50)
    assert trains[1]["run_config"]["label_proportion"] == 0.1 and trains[1]["run_config"]["num_bins"] == 5

    # the record: what comes back from the machine, one tar with one folder
    assert sorted(p.name for p in out.iterdir()) == ["phantom_cpu.tar.gz", "phantom_cpu_logs.tar.gz"]
    with tarfile.open(out / "phantom_cpu.tar.gz") as t:
        t.extractall(tmp_path / "docs_results", filter="data")
    rec = tmp_path / "docs_results" / "phantom_cpu"
    files = {p.relative_to(rec).as_posix() for p in rec.rglob("*") if p.is_file()}
    models = {"10/plain": "nnUNetTrainer_LabelProportion", "100/plain": "nnUNetTrainer_LabelProportion",
              "10/stipple_norelab": "STIPPLETrainer", "100/stipple_norelab": "STIPPLETrainer"}
    required = {"study.json", "cost.json", "gpu_study_environment.json", "report/table.md", "report/results.json"}
    for run, trainer in models.items():
        mdir = f"runs/{run}/{DS}/{trainer}__nnUNetPlans__2d"
        required |= {f"runs/{run}/run.json", f"runs/{run}/nsd_fold0_tol5mm.json", f"{mdir}/stipple_run.json",
                     f"{mdir}/fold_0/validation/summary.json"}
    assert required <= files, sorted(required - files)
    assert not [f for f in files if f.endswith((".pth", ".nii.gz", ".log", ".b2nd"))], sorted(files)
    study = json.loads((rec / "study.json").read_text())
    assert (study["profile"], study["configuration"], study["device"], study["alphas"]) == ("gpu-2d", "2d", "cpu",
                                                                                          [100.0, 10.0])
    assert json.loads((rec / "cost.json").read_text())["settings"]["device"] == "cpu"
    table = (rec / "report" / "table.md").read_text()
    assert "| Baseline (plain) |" in table and "| STIPPLE w/o relab |" in table
    environment = json.loads((rec / "gpu_study_environment.json").read_text())
    assert [(s["step"], s["status"]) for s in environment["steps"]] == [
        ("venv", "ok"), ("data", "ok"), ("cost", "skipped"), ("study", "skipped"), ("data", "ok"), ("cost", "ok"),
        ("study", "ok")]
    assert environment["environment"]["nnUNet_compile"] == "f"
    with tarfile.open(out / "phantom_cpu_logs.tar.gz") as t:
        names = t.getnames()
    assert any(n.startswith("logs/") for n in names) and "study/runs/10/plain/train_fold0.log" in names
