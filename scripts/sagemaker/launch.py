#!/usr/bin/env python3
"""Starts titan as a SageMaker training job (bring your own container) with the SageMaker
Python SDK v3 (`pip install "sagemaker==3.27.0"`): the image built from docker/Dockerfile,
INSTANCES x INSTANCE_TYPE, the `train` channel from S3, checkpoints <-> /opt/ml/checkpoints
(resumed by a restarted or spot job), TensorBoard from /opt/ml/output/tensorboard, and titan's
config and `--section.key value` overrides as hyperparameters (scripts/sagemaker/entry.sh turns
them back into flags).

  python3 scripts/sagemaker/launch.py --image URI --role ARN --instance-type ml.p5.48xlarge \\
      --instance-count 4 --train s3://bucket/c4/en --checkpoints s3://bucket/titan/ckpt \\
      --tensorboard s3://bucket/titan/tb --output s3://bucket/titan/out \\
      --config train_configs/llama3_8b.toml -- --training.steps 1000

--dry-run builds the request through the SDK as a real launch does, but botocore's Stubber
answers the CreateTrainingJob call instead of AWS: the request is printed as JSON and nothing is
sent (no credentials needed).
"""
import argparse
import datetime
import json
import sys


def hyperparameters(config, overrides):
    """titan's flags as SageMaker hyperparameters: {"config": FILE, "section.key": "value"}."""
    out = {"config": config}
    i = 0
    while i < len(overrides):
        flag = overrides[i]
        if not flag.startswith("--") or "." not in flag:
            sys.exit(f"launch: {flag!r}: expected titan overrides as --section.key value")
        key, _, value = flag[2:].partition("=")
        if not _:
            if i + 1 < len(overrides) and not overrides[i + 1].startswith("--"):
                value = overrides[i + 1]
                i += 1
            else:
                value = "true"  # a bare boolean flag
        out[key] = value
        i += 1
    return out


def make_trainer(a, boto_session):
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import CheckpointConfig, OutputDataConfig, StoppingCondition, TensorBoardOutputConfig
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer

    trainer = ModelTrainer(
        sagemaker_session=Session(boto_session=boto_session),
        role=a.role,
        base_job_name=a.job_name,
        training_image=a.image,
        compute=Compute(instance_type=a.instance_type, instance_count=a.instance_count,
                        volume_size_in_gb=a.volume_gb),
        output_data_config=OutputDataConfig(s3_output_path=a.output),
        checkpoint_config=CheckpointConfig(s3_uri=a.checkpoints, local_path="/opt/ml/checkpoints"),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=int(a.max_hours * 3600)),
        hyperparameters=hyperparameters(a.config, a.overrides),
    )
    trainer = trainer.with_tensorboard_output_config(
        TensorBoardOutputConfig(s3_output_path=a.tensorboard, local_path="/opt/ml/output/tensorboard"))
    return trainer, [InputData(channel_name="train", data_source=a.train)]


def dry_run_request(a):
    """The CreateTrainingJob request the SDK sends, answered by botocore's Stubber."""
    import os

    import boto3
    from botocore.stub import Stubber
    from sagemaker.core.utils.utils import SageMakerClient

    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"  # the SDK's switch: its role check asks IAM

    session = boto3.Session(aws_access_key_id="dry-run", aws_secret_access_key="dry-run", region_name=a.region)
    client = SageMakerClient(session=session).get_client("sagemaker")  # the client TrainingJob.create takes
    captured = {}

    def capture(params, **_):
        captured.update(params)

    client.meta.events.register("provide-client-params.sagemaker.CreateTrainingJob", capture)
    stubber = Stubber(client)
    arn = f"arn:aws:sagemaker:{a.region}:000000000000:training-job/dry-run"
    stubber.add_response("create_training_job", {"TrainingJobArn": arn})
    # The SDK reads the job back once created: a minimal description of a job just starting.
    stubber.add_response("describe_training_job", {
        "TrainingJobName": "dry-run", "TrainingJobArn": arn, "ModelArtifacts": {"S3ModelArtifacts": a.output},
        "TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting",
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": a.image},
        "ResourceConfig": {"InstanceType": a.instance_type, "InstanceCount": a.instance_count, "VolumeSizeInGB": a.volume_gb},
        "StoppingCondition": {}, "CreationTime": datetime.datetime(2026, 1, 1)})
    trainer, inputs = make_trainer(a, session)
    with stubber:
        trainer.train(input_data_config=inputs, wait=False, logs=False)
    return captured


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", required=True, help="the ECR URI of the image built from docker/Dockerfile")
    ap.add_argument("--role", required=True, help="the SageMaker execution role's ARN")
    ap.add_argument("--instance-type", default="ml.p5.48xlarge")
    ap.add_argument("--instance-count", type=int, default=1)
    ap.add_argument("--volume-gb", type=int, default=500)
    ap.add_argument("--train", required=True, help="the S3 URI of the training data (the train channel)")
    ap.add_argument("--checkpoints", required=True, help="the S3 URI /opt/ml/checkpoints syncs to")
    ap.add_argument("--tensorboard", required=True, help="the S3 URI /opt/ml/output/tensorboard syncs to")
    ap.add_argument("--output", required=True, help="the S3 URI of the job's output")
    ap.add_argument("--config", required=True, help="titan's TOML, as a path inside the image (train_configs/...)")
    ap.add_argument("--job-name", default="titan")
    ap.add_argument("--max-hours", type=float, default=24.0, help="SageMaker stops the job after this long (at most 28 days)")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--dry-run", action="store_true", help="print the request; send nothing")
    ap.add_argument("overrides", nargs="*", help="titan's --section.key value overrides (after --)")
    a = ap.parse_args()
    if a.instance_count < 1:
        sys.exit(f"launch: --instance-count {a.instance_count}: expected 1 or more")
    if not 0 < a.max_hours <= 28 * 24:
        sys.exit(f"launch: --max-hours {a.max_hours}: expected more than 0 and at most 672 (28 days)")
    if a.dry_run:
        print(json.dumps(dry_run_request(a), indent=1, default=str))
        return
    import boto3
    trainer, inputs = make_trainer(a, boto3.Session(region_name=a.region))
    trainer.train(input_data_config=inputs, wait=False, logs=False)
    print(f"launch: started {trainer._latest_training_job.training_job_name}")


if __name__ == "__main__":
    main()
