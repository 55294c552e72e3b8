"""scripts/sagemaker/launch.py --dry-run: the CreateTrainingJob request the SageMaker SDK (v3,
pinned) sends, captured by botocore's Stubber (no AWS endpoint is reachable): instance type and
count, the image, the train channel, the checkpoint and TensorBoard locations, the stopping time;
and the hyperparameters, fed to scripts/sagemaker/entry.sh as SageMaker would, give titan the
config and the overrides."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAILURES, PASSED = [], [0]


def check(ok, what):
    if ok:
        PASSED[0] += 1
        print("ok  ", what, flush=True)
    else:
        FAILURES.append(what)
        print("FAIL", what, flush=True)


def main():
    python = sys.argv[1]
    launch = os.path.join(ROOT, "scripts", "sagemaker", "launch.py")
    image = "123456789012.dkr.ecr.us-west-2.amazonaws.com/titan:cuda"
    args = [python, launch, "--dry-run", "--image", image, "--role", "arn:aws:iam::123456789012:role/titan",
            "--instance-type", "ml.p5.48xlarge", "--instance-count", "4", "--train", "s3://bucket/c4/en",
            "--checkpoints", "s3://bucket/titan/ckpt", "--tensorboard", "s3://bucket/titan/tb",
            "--output", "s3://bucket/titan/out", "--config", "train_configs/llama3_8b.toml", "--max-hours", "48",
            "--region", "us-west-2", "--", "--training.steps", "1000", "--checkpoint.interval=200",
            "--metrics.enable_color_printing"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=dict(os.environ, AWS_EC2_METADATA_DISABLED="true"))
    try:
        req = json.loads(r.stdout)
    except json.JSONDecodeError:
        req = None
    check(r.returncode == 0 and req is not None, f"the dry run prints the request ({r.stderr.strip()[-400:]})")
    if not req:
        return 1
    for flags, expect in [(["--instance-count", "0"], "--instance-count 0: expected 1 or more"),
                          (["--max-hours", "1000"], "--max-hours 1000.0: expected more than 0 and at most 672"),
                          (["--", "training.steps", "3"], "'training.steps': expected titan overrides as --section.key value")]:
        bad = [x for x in args if x not in ("--", "--training.steps", "1000", "--checkpoint.interval=200",
                                            "--metrics.enable_color_printing")] + flags
        b = subprocess.run(bad, capture_output=True, text=True, timeout=300, env=dict(os.environ, AWS_EC2_METADATA_DISABLED="true"))
        check(b.returncode != 0 and expect in b.stderr, f"launch.py refuses {' '.join(flags)} ({b.stderr.strip()[-200:]})")
    res, algo = req.get("ResourceConfig", {}), req.get("AlgorithmSpecification", {})
    check(res.get("InstanceType") == "ml.p5.48xlarge" and res.get("InstanceCount") == 4, f"instances: {res}")
    check(algo.get("TrainingImage") == image, f"the image: {algo}")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in req.get("InputDataConfig", [])}
    check(channels == {"train": "s3://bucket/c4/en"}, f"the train channel: {channels}")
    check(req.get("CheckpointConfig") == {"S3Uri": "s3://bucket/titan/ckpt", "LocalPath": "/opt/ml/checkpoints"},
          f"checkpoints <-> /opt/ml/checkpoints: {req.get('CheckpointConfig')}")
    check(req.get("TensorBoardOutputConfig") == {"S3OutputPath": "s3://bucket/titan/tb", "LocalPath": "/opt/ml/output/tensorboard"},
          f"TensorBoard from /opt/ml/output/tensorboard: {req.get('TensorBoardOutputConfig')}")
    check(req.get("StoppingCondition", {}).get("MaxRuntimeInSeconds") == 48 * 3600, f"stopping: {req.get('StoppingCondition')}")
    # What the container then runs: entry.sh reading these hyperparameters from a simulated /opt/ml.
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "input", "config")
        os.makedirs(config)
        json.dump({"current_host": "algo-1", "hosts": ["algo-1", "algo-2", "algo-3", "algo-4"]},
                  open(os.path.join(config, "resourceconfig.json"), "w"))
        json.dump(req["HyperParameters"], open(os.path.join(config, "hyperparameters.json"), "w"))
        json.dump({"train": {}}, open(os.path.join(config, "inputdataconfig.json"), "w"))
        fake = os.path.join(tmp, "titan")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'titan test (cuda build)'\n")
        os.chmod(fake, 0o755)
        e = subprocess.run(["bash", os.path.join(ROOT, "scripts", "sagemaker", "entry.sh")], capture_output=True,
                           text=True, env=dict(os.environ, SM_ROOT=tmp, TITAN=fake, NGPU="8", TITAN_ENTRY_DRY_RUN="1"))
        first = e.stdout.splitlines()[0] if e.stdout else ""
        want = ["--config train_configs/llama3_8b.toml", "--training.steps 1000", "--checkpoint.interval 200",
                "--metrics.enable_color_printing true", f"--training.dataset_path {tmp}/input/data/train",
                "RANK=0", "WORLD_SIZE=32"]
        check(e.returncode == 0 and len(e.stdout.splitlines()) == 8 and all(w in first for w in want),
              f"the container starts 8 ranks of 32 with titan's config and overrides ({e.stderr.strip()[-200:]} {first[:300]})")
    print(f"{PASSED[0]} passed, {len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
