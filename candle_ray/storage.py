"""Where sweeps keep their state: a local or shared folder, or an `s3://` prefix (pyarrow filesystems).

With s3, Tune writes its experiment state and trial checkpoints to the bucket; each trial works in a
node-local scratch folder, since Tune's checkpoints carry everything a resumed trial needs. The
endpoint comes from AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for S3-compatible servers.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from candle_ray.errors import UsageError

SWEEP_FILE = "sweep.json"  # a sweep's record: what --resume, --from-sweep and report read back


@dataclass
class Storage:
    uri: str  # what the user gave, made absolute: /abs/path or s3://bucket/prefix
    fs: object  # pyarrow.fs.FileSystem
    root: str  # the path inside fs

    @property
    def remote(self) -> bool:
        return "://" in self.uri

    @classmethod
    def parse(cls, text: str, *, option: str = "--storage", check: bool = True) -> "Storage":
        """`check` (driver side, before Ray starts): an s3:// path needs AWS credentials and an existing
        bucket, else a one-line UsageError says what to set or create. Workers re-open without it."""
        import pyarrow.fs as pafs

        if text.startswith("s3://"):
            bucket_and_prefix = text[len("s3://"):].strip("/")
            if not bucket_and_prefix:
                raise UsageError(f"{option} {text!r} names no bucket; write s3://bucket/prefix")
            uri = f"s3://{bucket_and_prefix}"
            if check:
                check_credentials(uri, option)
            fs = pafs.S3FileSystem(**s3_options())
            if check:
                check_bucket(uri, option)
            return cls(uri, fs, bucket_and_prefix)
        if "://" in text:
            raise UsageError(f"{option} {text!r}: only local paths and s3:// are supported")
        path = Path(text).expanduser().resolve()
        return cls(str(path), pafs.LocalFileSystem(), str(path))

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        try:
            return self.fs.get_file_info(path).type != pafs.FileType.NotFound
        except OSError as exc:
            raise UsageError(f"storage {self.uri} cannot be read ({exc}); check the bucket and credentials") from None

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as f:
            return f.read().decode()

    def write_text(self, path: str, text: str) -> None:
        """Atomic: a local file is written to a temporary name and renamed; an S3 PUT is all or nothing."""
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        target = path if self.remote else f"{path}.tmp-{os.getpid()}"
        with self.fs.open_output_stream(target) as f:
            f.write(text.encode())
        if not self.remote:
            os.replace(target, path)

    def upload(self, local: Path, path: str) -> None:
        if not self.remote:
            return  # local storage: the file is already there
        import pyarrow.fs as pafs

        pafs.copy_files(str(local), path, destination_filesystem=self.fs)

    def subdirs(self, path: str) -> list[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(path, allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory)

    def sweeps(self) -> list[str]:
        return [d for d in self.subdirs(self.root) if self.exists(self.path(d, SWEEP_FILE))]

    def has_sweep(self, name: str) -> bool:
        return self.exists(self.path(name, SWEEP_FILE))

    def read_sweep(self, name: str, missing: str, fix: str = "") -> dict:
        """The record of sweep `name`; when there is none, UsageError(`missing`, the sweeps there, `fix`)."""
        if not self.has_sweep(name):
            found = self.sweeps()
            listing = f"sweeps in {self.uri}: {', '.join(found)}" if found else f"there are no sweeps in {self.uri}"
            raise UsageError("; ".join(part for part in (missing, listing, fix) if part))
        return json.loads(self.read_text(self.path(name, SWEEP_FILE)))

    def read_results(self, name: str) -> list[dict] | None:
        """The rows of sweep `name`'s results.csv (written when it ended), None before it has one."""
        import csv
        import io

        path = self.path(name, "results.csv")
        return list(csv.DictReader(io.StringIO(self.read_text(path)))) if self.exists(path) else None

    def overview(self, name: str) -> dict:
        """What `candle-ray sweeps` shows of sweep `name`: its record, its results.csv rows (None before it
        ended) and the bytes under its folder here (checkpoints, Tune's state, report)."""
        import pyarrow.fs as pafs

        files = self.fs.get_file_info(pafs.FileSelector(self.path(name), recursive=True))
        return {"record": self.read_sweep(name, f"no sweep named {name!r}"), "rows": self.read_results(name),
                "bytes": sum(f.size or 0 for f in files if f.type == pafs.FileType.File)}

    def write_sweep(self, name: str, record: dict) -> None:
        self.write_text(self.path(name, SWEEP_FILE), json.dumps(record, indent=1, sort_keys=True))

    def work_dir(self, sweep: str) -> Path:
        """Local folder for a sweep's trials and results: inside the storage when it is a local path,
        else node-local scratch."""
        if not self.remote:
            return Path(self.path(sweep))
        return Path(tempfile.gettempdir()) / "candle-ray" / sweep


# --------------------------------------------------------------------------- s3 settings and start-up checks
def s3_options(**extra) -> dict:
    """pyarrow S3FileSystem options from the environment: the endpoint (AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL, for S3-compatible servers) explicit, so that a filesystem pickled to Ray's workers
    carries it; the region from AWS_DEFAULT_REGION / AWS_REGION."""
    options = {}
    endpoint = s3_endpoint()
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options["region"] = region
    return {**options, **extra}


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_PROFILE_KEYS = ("aws_access_key_id", "credential_process", "role_arn", "sso_start_url", "sso_session",
                 "web_identity_token_file")


def credentials_source() -> str | None:
    """Where the AWS SDK would find credentials, checked without a request, or None when it would find
    none: the environment, web identity, a container's endpoint, a profile in the shared files, or the
    EC2 instance metadata service (probed with a short connect unless AWS_EC2_METADATA_DISABLED=true)."""
    import configparser
    import socket

    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return "environment"
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"):
        return "web identity"
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        return "container"
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    for path, section in ((env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", profile),
                          (env.get("AWS_CONFIG_FILE") or "~/.aws/config",
                           profile if profile == "default" else f"profile {profile}")):
        parser = configparser.RawConfigParser()
        try:
            parser.read(Path(path).expanduser())
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        if parser.has_section(section) and any(parser.has_option(section, key) for key in _PROFILE_KEYS):
            return f"profile {profile}"
    if env.get("AWS_EC2_METADATA_DISABLED", "").lower() != "true":
        try:
            socket.create_connection(("169.254.169.254", 80), timeout=0.5).close()
            return "instance metadata"
        except OSError:
            pass
    return None


def check_credentials(uri: str, option: str = "--storage") -> None:
    """UsageError naming the variables to set when no AWS credentials are configured (pyarrow itself
    would fail later with an opaque error, or send unsigned requests)."""
    if credentials_source() is None:
        raise UsageError(f"{option} {uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                         f"(or AWS_PROFILE with ~/.aws/credentials), plus AWS_ENDPOINT_URL for an S3-compatible server")


def check_bucket(uri: str, option: str = "--storage") -> None:
    """One HEAD of the bucket with short timeouts: UsageError when it does not exist, cannot be reached or
    refuses the credentials."""
    import pyarrow.fs as pafs

    bucket = uri[len("s3://"):].split("/", 1)[0]
    where = f" at {s3_endpoint()}" if s3_endpoint() else ""
    probe = pafs.S3FileSystem(**s3_options(connect_timeout=5, request_timeout=20,
                                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2)))
    try:
        found = probe.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError as exc:
        text = " ".join(str(exc).split())
        if "NETWORK_CONNECTION" in text or "curlCode" in text:
            raise UsageError(f"{option} {uri}: cannot reach the S3 endpoint{where or ' (AWS)'}; check AWS_ENDPOINT_URL "
                             f"and the network ({text})") from None
        if "ACCESS_DENIED" in text or "403" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
            raise UsageError(f"{option} {uri}: access to bucket {bucket!r} denied; check AWS_ACCESS_KEY_ID / "
                             f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's policy ({text})") from None
        raise UsageError(f"{option} {uri}: bucket {bucket!r} cannot be read ({text}); check the bucket and credentials") from None
    if not found:
        endpoint = f" --endpoint-url {s3_endpoint()}" if s3_endpoint() else ""
        raise UsageError(f"{option} {uri}: bucket {bucket!r} does not exist{where}; create it first "
                         f"(e.g. `aws s3 mb s3://{bucket}{endpoint}`) or fix the path")
