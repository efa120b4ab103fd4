"""Titan through Bedrock batch inference: the same model at about half the on-demand price.

A batch job takes JSONL records from S3 (`{"recordId": ..., "modelInput": <InvokeModel body>}`)
and, hours later, leaves `<output>/<job id>/<input file>.out` beside them, one line per record
with its `modelOutput` (InvokeModel's answer) or an `error` (`errorCode`, `errorMessage`), and a
`manifest.json.out` of counts. So the work is split in three calls, any number of Lambda
invocations apart, and an Embedder that answers from the job's output:

    jobs = BatchJobs(config)                       # config: TitanEmbedderConfig, batch = true
    with jobs.records("sgx-20260101-20260331-ab12cd34") as records:
        records.add(photo_bytes, title)            # once per photo still needing an embedding
    arn = jobs.submit(records)                     # CreateModelInvocationJob
    jobs.poll(arn).state                           # "pending", "done" or "failed"
    embedder = BatchEmbedder(jobs.vectors(arn), TitanEmbedder(config))
    embedder.embed([photo_bytes], captions=[title])  # the job's vector, not a new call

A record's id is the photo's sha256 (with its title, when titles are embedded too), so the
pipeline, which hands the embedder the same photo bytes, finds it again; a photo the job does not
know (a sale added since, a photo changed) is embedded on demand by the fallback. The request
body and the checks of each answer are the on-demand embedder's own (`titan_request`,
`titan_vector`): a vector of another length than configured raises ModelUnavailable, a record
Bedrock refused becomes that photo's EmbeddingError, as its InvokeModel refusal would.

Bedrock's quotas (defaults; Service Quotas can raise the maxima): at least MIN_RECORDS records
a job (fewer: embed on demand), at most MAX_RECORDS and MAX_JOB_BYTES, input files of at most
MAX_FILE_BYTES; a range past a maximum is refused, to be backfilled in shorter ranges.
Records are streamed to S3 as multipart uploads, so neither memory nor /tmp holds a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from smartgo_exporter.embedders import Embedder, Vector
from smartgo_exporter.embedders.titan import (
    MAX_IMAGE_BYTES,
    aws_client,
    titan_caption,
    titan_request,
    titan_vector,
)
from smartgo_exporter.errors import BatchJobError, EmbeddingError

if TYPE_CHECKING:
    from smartgo_exporter.config import TitanEmbedderConfig

log = structlog.get_logger(__name__)

MIN_RECORDS = 100
"""Bedrock's "Minimum number of records per batch inference job": a smaller job fails."""
MAX_RECORDS = 50_000
"""Bedrock's default "Records per batch inference job"."""
MAX_FILE_BYTES = 1_000_000_000
"""Bedrock's default "Batch inference input file size"; records go on in a new file past it."""
MAX_JOB_BYTES = 5_000_000_000
"""Bedrock's default "Batch inference job size", all input files together: photos of about
300 kB as Titan receives them make some 12,000 records."""
PART_BYTES = 16 * 1024 * 1024
"""A multipart upload's part: what is held in memory of an input file being written."""
TIMEOUT_HOURS = 72
"""How long Bedrock may take before the job expires (24 to 168)."""

JobState = Literal["pending", "done", "failed"]
PENDING_STATUSES = frozenset({"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"})
DONE_STATUSES = frozenset({"Completed", "PartiallyCompleted"})
"""PartiallyCompleted: some records failed; each carries its error, as a Completed job's do."""
RECORD_ERROR_REASONS = {400: "validation", 408: "timeout", 424: "model_error", 429: "throttled"}
"""A record's `errorCode` -> the reason an on-demand refusal of the same kind gets; any other
code is `service_error`."""


def record_id(image: bytes, caption: str | None) -> str:
    """The photo's sha256, or with a caption that is sent as `inputText`, the sha256 of both:
    one photo with two titles is two inputs, as `batches.embed_photos` sees it."""
    digest = hashlib.sha256(image).hexdigest()
    text = titan_caption(caption)
    if text is None:
        return digest
    return hashlib.sha256(f"{digest}\0{text}".encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class JobPoll:
    """Where a job stands: `state` for the caller, Bedrock's `status` and `message` for people."""

    state: JobState
    status: str
    message: str = ""


class BatchJobs:
    """Batch jobs of one Titan configuration: its S3 location, service role and model.

    Construction builds the clients and calls nothing. Errors of S3 or Bedrock raise
    BatchJobError naming the job and what refused.
    """

    def __init__(self, config: TitanEmbedderConfig) -> None:
        self._config = config
        self._bucket, _, prefix = config.batch_location.removeprefix("s3://").partition("/")
        self._prefix = prefix.strip("/")
        self._s3 = aws_client(config, "s3", config.s3_endpoint_url)
        self._bedrock = aws_client(config, "bedrock", config.batch_endpoint_url)

    def records(self, name: str, **limits: int) -> JobInput:
        """A writer of job `name`'s records, under `<batch_location>/<name>/input/`; `limits`
        (max_file_bytes, max_job_bytes, max_records) stand in for Bedrock's quotas."""
        return JobInput(
            self._s3,
            self._bucket,
            self._key(name, "input"),
            name,
            self._config.dimension,
            self._config.include_title,
            **limits,
        )

    def submit(self, records: JobInput) -> str:
        """Start the job on the records written (closed first); its ARN.

        The job's name is its idempotency token too, so a retried call starts no second job.
        """
        records.close()
        name = records.name
        try:
            answer = self._bedrock.create_model_invocation_job(
                jobName=name,
                clientRequestToken=name,
                roleArn=self._config.batch_role_arn,
                modelId=self._config.model_id,
                inputDataConfig={
                    "s3InputDataConfig": {
                        "s3Uri": f"s3://{self._bucket}/{records.prefix}/",
                        "s3InputFormat": "JSONL",
                    }
                },
                outputDataConfig={
                    "s3OutputDataConfig": {
                        "s3Uri": f"s3://{self._bucket}/{self._key(name, 'output')}/"
                    }
                },
                timeoutDurationInHours=TIMEOUT_HOURS,
            )
        except (ClientError, BotoCoreError) as error:
            raise BatchJobError(name, f"CreateModelInvocationJob refused: {error}") from None
        arn = str(answer["jobArn"])
        log.info("batch_job_submitted", job=arn, records=records.count, files=len(records.keys))
        return arn

    def poll(self, job_arn: str) -> JobPoll:
        """GetModelInvocationJob, as pending, done or failed (Failed, Stopped, Expired)."""
        job = self._describe(job_arn)
        status = str(job.get("status", ""))
        message = str(job.get("message", ""))
        if status in PENDING_STATUSES:
            return JobPoll("pending", status, message)
        if status in DONE_STATUSES:
            return JobPoll("done", status, message)
        return JobPoll("failed", status, message)

    def vectors(self, job_arn: str) -> dict[str, Vector | EmbeddingError]:
        """A finished job's outcome by record id: its unit vector, or why Bedrock refused it.

        Raises ModelUnavailable when an output is no vector of the configured length (as the
        on-demand embedder does), BatchJobError when the output cannot be read.
        """
        job = self._describe(job_arn)
        output = job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        bucket, _, prefix = str(output).removeprefix("s3://").partition("/")
        folder = "/".join(part for part in (prefix.strip("/"), job_arn.rsplit("/", 1)[-1]) if part)
        outcomes: dict[str, Vector | EmbeddingError] = {}
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{folder}/"
            )
            keys = [
                item["Key"]
                for page in pages
                for item in page.get("Contents", [])
                if item["Key"].endswith(".jsonl.out")
            ]
            for key in keys:
                body = self._s3.get_object(Bucket=bucket, Key=key)["Body"]
                for line in body.iter_lines():
                    if line.strip():
                        self._read_record(json.loads(line), outcomes)
        except (ClientError, BotoCoreError) as error:
            raise BatchJobError(job_arn, f"cannot read its output at {output}: {error}") from None
        except (ValueError, KeyError, TypeError) as error:
            raise BatchJobError(job_arn, f"output at {output} is not Bedrock's: {error}") from None
        if not keys:
            raise BatchJobError(job_arn, f"no output files (*.jsonl.out) under {output}")
        refused = sum(isinstance(outcome, EmbeddingError) for outcome in outcomes.values())
        log.info("batch_job_read", job=job_arn, records=len(outcomes), refused=refused)
        return outcomes

    def _read_record(
        self, record: dict[str, Any], outcomes: dict[str, Vector | EmbeddingError]
    ) -> None:
        rid = str(record["recordId"])
        error = record.get("error")
        if error is not None:
            code = error.get("errorCode")
            reason = RECORD_ERROR_REASONS.get(code, "service_error")
            outcomes[rid] = EmbeddingError(
                reason, f"batch record {code}: {error.get('errorMessage')}"
            )
            return
        outcomes[rid] = titan_vector(
            record.get("modelOutput"), self._config.model_id, self._config.dimension
        )

    def _describe(self, job_arn: str) -> dict[str, Any]:
        try:
            job: dict[str, Any] = self._bedrock.get_model_invocation_job(jobIdentifier=job_arn)
        except (ClientError, BotoCoreError) as error:
            raise BatchJobError(job_arn, f"GetModelInvocationJob refused: {error}") from None
        return job

    def _key(self, name: str, part: str) -> str:
        return "/".join(piece for piece in (self._prefix, name, part) if piece)


class JobInput:
    """A job's records as they are written: each distinct photo once, as `titan_request` makes
    its body, in JSONL files of at most `max_file_bytes` streamed to S3 (`part-00000.jsonl`, ...).

    Use it as a context manager: an exception discards what was written, leaving no file.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        prefix: str,
        name: str,
        dimension: int,
        include_title: bool,
        *,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_job_bytes: int = MAX_JOB_BYTES,
        max_records: int = MAX_RECORDS,
        max_image_bytes: int = MAX_IMAGE_BYTES,
    ) -> None:
        self.name = name
        self.prefix = prefix
        self.keys: list[str] = []
        self._s3 = s3
        self._bucket = bucket
        self._dimension = dimension
        self._include_title = include_title
        self._max_file_bytes = max_file_bytes
        self._max_job_bytes = max_job_bytes
        self._max_records = max_records
        self._max_image_bytes = max_image_bytes
        self._bytes = 0
        self._ids: set[str] = set()
        self._file: _Upload | None = None

    @property
    def count(self) -> int:
        return len(self._ids)

    def add(self, image: bytes, caption: str | None = None) -> EmbeddingError | None:
        """Write the photo's record, unless it has one already; or why it cannot have one
        (`titan_request`'s refusals: `decode_failed`, `too_large`, ...).

        BatchJobError past `max_records` or `max_job_bytes`: Bedrock would refuse the job.
        """
        caption = caption if self._include_title else None
        rid = record_id(image, caption)
        if rid in self._ids:
            return None
        request = titan_request(image, caption, self._dimension, self._max_image_bytes)
        if isinstance(request, EmbeddingError):
            return request
        line = (json.dumps({"recordId": rid, "modelInput": request}) + "\n").encode()
        if len(self._ids) >= self._max_records or self._bytes + len(line) > self._max_job_bytes:
            raise BatchJobError(
                self.name,
                f"over Bedrock's quota of {self._max_records} records or {self._max_job_bytes}"
                f" bytes a job after {len(self._ids)} photos: backfill fewer days at once",
            )
        if self._file is not None and self._file.size + len(line) > self._max_file_bytes:
            self._file.close()
            self._file = None
        if self._file is None:
            key = f"{self.prefix}/part-{len(self.keys):05d}.jsonl"
            self._file = _Upload(self._s3, self._bucket, key, self.name)
            self.keys.append(key)
        self._file.write(line)
        self._bytes += len(line)
        self._ids.add(rid)
        return None

    def discard(self) -> None:
        """Drop what was written: too few records for a job, say."""
        if self._file is not None:
            self._file.abort()
            self._file = None
        for key in self.keys:
            try:
                self._s3.delete_object(Bucket=self._bucket, Key=key)
            except (ClientError, BotoCoreError) as error:
                log.warning("batch_input_delete_failed", key=key, error=str(error))
        self.keys = []

    def close(self) -> None:
        """Finish the file being written; the records are then all in S3."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JobInput:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            self.close()
        else:
            self.discard()


class _Upload:
    """One S3 object written as a multipart upload, a part whenever PART_BYTES have gathered."""

    def __init__(self, s3: Any, bucket: str, key: str, job: str) -> None:
        self._s3, self._bucket, self._key, self._job = s3, bucket, key, job
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self.size = 0
        upload = self._call("create_multipart_upload", Bucket=bucket, Key=key)
        self._upload_id = upload["UploadId"]

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= PART_BYTES:
            self._send_part()

    def close(self) -> None:
        if self._buffer or not self._parts:
            self._send_part()
        self._call(
            "complete_multipart_upload",
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        try:
            self._s3.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )
        except (ClientError, BotoCoreError) as error:  # lapses with the bucket's lifecycle rule
            log.warning("batch_upload_abort_failed", key=self._key, error=str(error))

    def _send_part(self) -> None:
        number = len(self._parts) + 1
        answer = self._call(
            "upload_part",
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer = bytearray()

    def _call(self, operation: str, **arguments: Any) -> Any:
        try:
            return getattr(self._s3, operation)(**arguments)
        except (ClientError, BotoCoreError) as error:
            where = f"s3://{self._bucket}/{self._key}"
            raise BatchJobError(self._job, f"cannot write {where}: {error}") from None


class BatchEmbedder:
    """An Embedder answering from a finished job's outcomes (`BatchJobs.vectors`), by record id;
    what the job does not know, `fallback` (the on-demand TitanEmbedder) embeds.

    Its `model_id`, `dim` and `include_title` are the fallback's: the vectors are the same
    model's, comparable with every other Titan row of the table. `from_job` and `on_demand`
    count the photos answered each way.
    """

    def __init__(self, outcomes: Mapping[str, Vector | EmbeddingError], fallback: Embedder) -> None:
        self._outcomes = outcomes
        self._fallback = fallback
        self.from_job = 0
        self.on_demand = 0

    @property
    def model_id(self) -> str:
        return self._fallback.model_id

    @property
    def dim(self) -> int:
        return self._fallback.dim

    @property
    def include_title(self) -> bool:
        return self._fallback.include_title

    def embed(
        self, images: Sequence[bytes], *, captions: Sequence[str | None] | None = None
    ) -> list[Vector | EmbeddingError]:
        """As `Embedder.embed`: the job's outcome for each photo it holds, the fallback's for
        the others (in one call)."""
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        titles = captions if captions is not None and self.include_title else [None] * len(images)
        answers: list[Vector | EmbeddingError | None] = [
            self._outcomes.get(record_id(image, title))
            for image, title in zip(images, titles, strict=True)
        ]
        missing = [position for position, answer in enumerate(answers) if answer is None]
        if missing:
            log.info("batch_job_misses_embedded_on_demand", photos=len(missing))
            embedded = self._fallback.embed(
                [images[position] for position in missing],
                captions=[titles[position] for position in missing],
            )
            for position, outcome in zip(missing, embedded, strict=True):
                answers[position] = outcome
        self.on_demand += len(missing)
        self.from_job += len(images) - len(missing)
        return [answer for answer in answers if answer is not None]
