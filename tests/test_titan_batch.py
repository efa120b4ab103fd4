"""Titan through Bedrock batch inference, against a local Bedrock and a real S3 (SeaweedFS).

The local Bedrock (`smartgo_exporter.demo.bedrock_local`) answers CreateModelInvocationJob and
GetModelInvocationJob as AWS does and runs the job itself: it reads the JSONL records from
SeaweedFS and writes the `.jsonl.out` files and the manifest back there. Both are signed for
with SeaweedFS's own key, as a Bedrock and an S3 of one account would be; nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from smartgo_exporter.config import TitanEmbedderConfig
from smartgo_exporter.config_loader import load_config
from smartgo_exporter.demo.bedrock_local import LocalBedrock
from smartgo_exporter.embedders import Vector
from smartgo_exporter.embedders.titan import TitanEmbedder
from smartgo_exporter.embedders.titan_batch import (
    MIN_RECORDS,
    BatchEmbedder,
    BatchJobs,
    JobPoll,
    record_id,
)
from smartgo_exporter.errors import BatchJobError, ConfigError, EmbeddingError, ModelUnavailable
from tests.servers.seaweedfs import Seaweed

ROLE_ARN = "arn:aws:iam::123456789012:role/smartgo-exporter-bedrock-batch"


def photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


PHOTOS = [photo(seed) for seed in range(MIN_RECORDS + 5)]


@pytest.fixture
def bedrock(batch_bedrock: LocalBedrock) -> LocalBedrock:
    return batch_bedrock


@pytest.fixture
def bucket(batch_bucket: str) -> str:
    return batch_bucket


def batch_settings(bedrock: LocalBedrock, seaweedfs: Seaweed, bucket: str) -> dict[str, Any]:
    """The `[embedder]` section of a Titan embedder batching through these servers."""
    return {
        "type": "titan",
        "region": seaweedfs.region,
        "endpoint_url": bedrock.endpoint_url,
        "batch": True,
        "batch_location": f"s3://{bucket}/embeddings",
        "batch_role_arn": ROLE_ARN,
        "batch_endpoint_url": bedrock.endpoint_url,
        "s3_endpoint_url": seaweedfs.s3_endpoint,
    }


@pytest.fixture
def config(bedrock: LocalBedrock, bucket: str, seaweedfs: Seaweed) -> TitanEmbedderConfig:
    return TitanEmbedderConfig(**batch_settings(bedrock, seaweedfs, bucket) | {"dimension": 384})


def submitted(jobs: BatchJobs, photos: list[bytes], name: str = "sgx-test-job", **kw: Any) -> str:
    with jobs.records(name, **kw) as records:
        for image in photos:
            assert records.add(image) is None
    return jobs.submit(records)


def as_vector(outcome: Vector | EmbeddingError) -> Vector:
    assert isinstance(outcome, np.ndarray), outcome
    return outcome


def finished(jobs: BatchJobs, arn: str) -> JobPoll:
    for _ in range(10):
        poll = jobs.poll(arn)
        if poll.state != "pending":
            return poll
    raise AssertionError(f"{arn} still pending after 10 polls")


def objects(seaweedfs: Seaweed, bucket: str) -> list[str]:
    listed = seaweedfs.s3_client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def text_of(seaweedfs: Seaweed, bucket: str, key: str) -> str:
    body = seaweedfs.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return str(body.decode())


# The records written


def test_each_distinct_photo_is_one_record_named_by_its_sha256(
    config: TitanEmbedderConfig, seaweedfs: Seaweed, bucket: str
) -> None:
    jobs = BatchJobs(config)
    with jobs.records("sgx-test-job") as records:
        for image in [PHOTOS[0], PHOTOS[1], PHOTOS[0]]:
            records.add(image)

    [key] = objects(seaweedfs, bucket)
    assert key == "embeddings/sgx-test-job/input/part-00000.jsonl"
    lines = [json.loads(line) for line in text_of(seaweedfs, bucket, key).splitlines()]
    assert [line["recordId"] for line in lines] == [
        hashlib.sha256(PHOTOS[0]).hexdigest(),
        hashlib.sha256(PHOTOS[1]).hexdigest(),
    ]
    assert set(lines[0]) == {"recordId", "modelInput"}
    assert set(lines[0]["modelInput"]) == {"inputImage", "embeddingConfig"}
    assert lines[0]["modelInput"]["embeddingConfig"] == {"outputEmbeddingLength": 384}


def test_a_photo_titan_could_not_take_gets_no_record_and_says_why(
    config: TitanEmbedderConfig,
) -> None:
    with BatchJobs(config).records("sgx-test-job") as records:
        refused = records.add(b"<html>not a photo</html>")

    assert isinstance(refused, EmbeddingError)
    assert refused.reason == "decode_failed"
    assert records.count == 0


def test_records_go_on_in_a_new_file_past_the_file_size_limit(
    config: TitanEmbedderConfig, seaweedfs: Seaweed, bucket: str
) -> None:
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS, max_file_bytes=100_000)

    inputs = [key for key in objects(seaweedfs, bucket) if key.endswith(".jsonl")]
    assert len(inputs) > 1
    assert finished(jobs, arn).state == "done"
    assert len(jobs.vectors(arn)) == len(PHOTOS)


def test_a_range_past_bedrocks_job_size_quota_is_refused_leaving_nothing_in_s3(
    config: TitanEmbedderConfig, seaweedfs: Seaweed, bucket: str
) -> None:
    def write_every_photo() -> None:
        with BatchJobs(config).records("sgx-test-job", max_job_bytes=20_000) as records:
            for image in PHOTOS:
                records.add(image)

    with pytest.raises(BatchJobError, match=r"sgx-test-job: over Bedrock's quota.*fewer days"):
        write_every_photo()

    assert objects(seaweedfs, bucket) == []


def test_titles_are_part_of_the_record_only_with_include_title(
    config: TitanEmbedderConfig,
) -> None:
    titled = config.model_copy(update={"include_title": True})

    assert record_id(PHOTOS[0], "Denim  jacket") != record_id(PHOTOS[0], None)
    assert record_id(PHOTOS[0], "Denim  jacket") == record_id(PHOTOS[0], "Denim jacket")
    with BatchJobs(titled).records("sgx-a") as records:
        records.add(PHOTOS[0], "Denim jacket")
        records.add(PHOTOS[0], "Leather tote")
    with BatchJobs(config).records("sgx-b") as untitled:
        untitled.add(PHOTOS[0], "Denim jacket")
        untitled.add(PHOTOS[0], "Leather tote")
    assert (records.count, untitled.count) == (2, 1)


# The job


def test_the_job_moves_through_bedrocks_statuses_to_completed(
    config: TitanEmbedderConfig,
) -> None:
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)

    polls = [jobs.poll(arn) for _ in range(3)]

    assert [(poll.state, poll.status) for poll in polls] == [
        ("pending", "Validating"),
        ("pending", "InProgress"),
        ("done", "Completed"),
    ]
    assert arn.startswith(f"arn:aws:bedrock:{config.region}:")


def test_the_job_is_started_with_the_role_model_and_locations_configured(
    config: TitanEmbedderConfig, bedrock: LocalBedrock, bucket: str
) -> None:
    arn = submitted(BatchJobs(config), PHOTOS)

    [job] = bedrock.jobs.values()
    assert job.arn == arn
    assert job.request["roleArn"] == ROLE_ARN
    assert job.request["modelId"] == "amazon.titan-embed-image-v1"
    assert job.input_uri == f"s3://{bucket}/embeddings/sgx-test-job/input/"
    assert job.output_uri == f"s3://{bucket}/embeddings/sgx-test-job/output/"


def test_the_output_is_where_bedrock_puts_it_under_the_job_id(
    config: TitanEmbedderConfig, seaweedfs: Seaweed, bucket: str
) -> None:
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)
    finished(jobs, arn)

    job_id = arn.rsplit("/", 1)[-1]
    folder = f"embeddings/sgx-test-job/output/{job_id}"
    assert f"{folder}/part-00000.jsonl.out" in objects(seaweedfs, bucket)
    manifest = json.loads(text_of(seaweedfs, bucket, f"{folder}/manifest.json.out"))
    assert manifest["totalRecordCount"] == len(PHOTOS)
    assert manifest["errorRecordCount"] == 0


def test_the_jobs_vectors_are_the_ones_on_demand_titan_answers(
    config: TitanEmbedderConfig,
) -> None:
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)
    finished(jobs, arn)

    outcomes = jobs.vectors(arn)
    on_demand = TitanEmbedder(config).embed(PHOTOS[:3])

    for image, expected in zip(PHOTOS[:3], on_demand, strict=True):
        vector = outcomes[record_id(image, None)]
        assert isinstance(vector, np.ndarray)
        assert vector.dtype == np.float32
        assert vector.shape == (384,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
        assert np.array_equal(vector, as_vector(expected))


def test_a_record_bedrock_failed_is_that_photos_embedding_error(
    config: TitanEmbedderConfig, bedrock: LocalBedrock
) -> None:
    bedrock.fail_records.add(record_id(PHOTOS[4], None))
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)
    finished(jobs, arn)

    outcomes = jobs.vectors(arn)

    failed = outcomes[record_id(PHOTOS[4], None)]
    assert isinstance(failed, EmbeddingError)
    assert failed.reason == "service_error"
    assert "500" in failed.detail
    assert sum(isinstance(outcome, np.ndarray) for outcome in outcomes.values()) == len(PHOTOS) - 1


def test_a_record_bedrock_refused_as_invalid_is_a_validation_error(
    config: TitanEmbedderConfig, bedrock: LocalBedrock
) -> None:
    bedrock.max_image_bytes = 100  # every photo is over it
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)
    finished(jobs, arn)

    refused = jobs.vectors(arn)[record_id(PHOTOS[0], None)]

    assert isinstance(refused, EmbeddingError)
    assert refused.reason == "validation"


def test_an_output_of_another_dimension_raises_model_unavailable(
    config: TitanEmbedderConfig, bedrock: LocalBedrock
) -> None:
    bedrock.dimension_override = 256
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)
    finished(jobs, arn)

    with pytest.raises(ModelUnavailable, match="length 256, not the configured 384"):
        jobs.vectors(arn)


def test_a_job_bedrock_failed_polls_failed_with_its_message(
    config: TitanEmbedderConfig, bedrock: LocalBedrock
) -> None:
    bedrock.fail_job = "The service role cannot read the input location."
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)

    poll = finished(jobs, arn)

    assert poll == JobPoll("failed", "Failed", "The service role cannot read the input location.")


def test_a_job_of_fewer_records_than_bedrocks_minimum_fails(config: TitanEmbedderConfig) -> None:
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS[: MIN_RECORDS - 1])

    poll = finished(jobs, arn)

    assert poll.state == "failed"
    assert f"minimum number of records for a batch inference job is {MIN_RECORDS}" in poll.message


def test_a_role_bedrock_refuses_raises_batch_job_error_naming_the_job(
    config: TitanEmbedderConfig,
) -> None:
    wrong = config.model_copy(update={"batch_role_arn": "arn:aws:iam::123456789012:user/me"})

    with pytest.raises(BatchJobError, match=r"sgx-test-job.*ValidationException"):
        submitted(BatchJobs(wrong), PHOTOS)


def test_an_unknown_job_raises_batch_job_error(config: TitanEmbedderConfig) -> None:
    missing = "arn:aws:bedrock:us-east-1:000000000000:model-invocation-job/abcdefabcdef"

    with pytest.raises(BatchJobError, match="ResourceNotFoundException"):
        BatchJobs(config).poll(missing)


# The embedder


def test_the_batch_embedder_answers_from_the_job_and_embeds_the_rest_on_demand(
    config: TitanEmbedderConfig, bedrock: LocalBedrock
) -> None:
    jobs = BatchJobs(config)
    arn = submitted(jobs, PHOTOS)
    finished(jobs, arn)
    embedder = BatchEmbedder(jobs.vectors(arn), TitanEmbedder(config))
    new_photo = photo(10_000)

    known, new = embedder.embed([PHOTOS[0], new_photo])

    assert bedrock.requests == 1  # InvokeModel, for the photo the job did not have
    assert (embedder.from_job, embedder.on_demand) == (1, 1)
    [on_demand] = TitanEmbedder(config).embed([PHOTOS[0]])
    assert np.array_equal(as_vector(known), as_vector(on_demand))
    as_vector(new)
    assert embedder.model_id == "amazon.titan-embed-image-v1:384"


# Configuration


def test_batch_without_its_location_or_role_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="batch_location"):
        load_config(
            source={"type": "rest", "url": "https://pos.example/sales"},
            embedder={"type": "titan", "batch": True, "batch_role_arn": ROLE_ARN},
        )
    with pytest.raises(ConfigError, match="batch_role_arn"):
        load_config(
            source={"type": "rest", "url": "https://pos.example/sales"},
            embedder={"type": "titan", "batch": True, "batch_location": "s3://bucket/batch"},
        )
