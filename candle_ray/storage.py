"""Where sweeps keep their state: a local or shared folder, or an `s3://` prefix (pyarrow filesystems).

With s3, Tune writes its experiment state and trial checkpoints to the bucket; each trial works in a
node-local scratch folder, since Tune's checkpoints carry everything a resumed trial needs. The
endpoint comes from AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for S3-compatible servers.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from candle_ray.errors import UsageError


@dataclass
class Storage:
    uri: str  # what the user gave, made absolute: /abs/path or s3://bucket/prefix
    fs: object  # pyarrow.fs.FileSystem
    root: str  # the path inside fs

    @property
    def remote(self) -> bool:
        return "://" in self.uri

    @classmethod
    def parse(cls, text: str) -> "Storage":
        import pyarrow.fs as pafs

        if text.startswith("s3://"):
            options = {}
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:  # explicit, so that the filesystem Tune pickles to the trials carries it
                scheme, _, host = endpoint.partition("://")
                options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
            bucket_and_prefix = text[len("s3://"):].strip("/")
            if not bucket_and_prefix:
                raise UsageError(f"--storage {text!r} names no bucket; write s3://bucket/prefix")
            region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
            fs = pafs.S3FileSystem(region=region, **options) if region else pafs.S3FileSystem(**options)
            return cls(f"s3://{bucket_and_prefix}", fs, bucket_and_prefix)
        if "://" in text:
            raise UsageError(f"--storage {text!r}: only local paths and s3:// are supported")
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

    def work_dir(self, sweep: str) -> Path:
        """Local folder for a sweep's trials and results: inside the storage when it is a local path,
        else node-local scratch."""
        if not self.remote:
            return Path(self.path(sweep))
        return Path(tempfile.gettempdir()) / "candle-ray" / sweep
