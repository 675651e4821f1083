"""Direct bucket access for the end-to-end tests (create buckets, inspect,
corrupt or plant objects), through boto3 from the test venv."""
import sys

import boto3
from botocore.config import Config

endpoint = sys.argv[1]
op = sys.argv[2]
args = sys.argv[3:]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
    config=Config(s3={"addressing_style": "path"}),
)

if op == "create-bucket":
    s3.create_bucket(Bucket=args[0])
elif op == "list":
    bucket, prefix = args[0], args[1] if len(args) > 1 else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            print(f"{o['Key']}\t{o['Size']}")
elif op == "list-etags":
    # list-etags BUCKET PREFIX: key, size and ETag of every object (what a command that changes nothing leaves as it was)
    bucket, prefix = args[0], args[1] if len(args) > 1 else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            print(f"{o['Key']}\t{o['Size']}\t{o['ETag']}")
elif op == "put":
    bucket, key = args[0], args[1]
    s3.put_object(Bucket=bucket, Key=key, Body=sys.stdin.buffer.read())
elif op == "put-meta":
    # put-meta BUCKET KEY NAME=VALUE...: stdin as the body, with user metadata
    bucket, key = args[0], args[1]
    meta = dict(a.split("=", 1) for a in args[2:])
    s3.put_object(Bucket=bucket, Key=key, Body=sys.stdin.buffer.read(), Metadata=meta)
elif op == "get":
    bucket, key = args[0], args[1]
    sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
elif op == "head-meta":
    bucket, key = args[0], args[1]
    r = s3.head_object(Bucket=bucket, Key=key)
    print(r.get("ContentDisposition", ""))
    for k, v in r.get("Metadata", {}).items():
        print(f"{k}={v}")
elif op == "delete":
    s3.delete_object(Bucket=args[0], Key=args[1])
elif op == "copy":
    s3.copy_object(Bucket=args[0], Key=args[2], CopySource={"Bucket": args[0], "Key": args[1]})
elif op == "start-upload":
    # start-upload BUCKET KEY: a multipart upload with one part, never
    # completed (what a push killed half-way leaves); prints its id
    bucket, key = args[0], args[1]
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"part" * 1024)
    print(upload)
elif op == "list-uploads":
    bucket, prefix = args[0], args[1] if len(args) > 1 else ""
    for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        print(f"{u['Key']}\t{u['UploadId']}")
elif op == "head-sse":
    # head-sse BUCKET PREFIX: every object under PREFIX with its encryption
    # (key, ServerSideEncryption, SSEKMSKeyId, BucketKeyEnabled ('-' when absent), size)
    bucket, prefix = args[0], args[1] if len(args) > 1 else ""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            r = s3.head_object(Bucket=bucket, Key=o["Key"])
            fields = [r.get("ServerSideEncryption", "-"), r.get("SSEKMSKeyId", "-"), str(r.get("BucketKeyEnabled", "-")), str(o["Size"])]
            print("\t".join([o["Key"]] + fields))
elif op == "enable-versioning":
    s3.put_bucket_versioning(Bucket=args[0], VersioningConfiguration={"Status": "Enabled"})
elif op == "list-versions":
    # list-versions BUCKET PREFIX: key, version id, current or noncurrent, version or marker
    bucket, prefix = args[0], args[1] if len(args) > 1 else ""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            print(f"{v['Key']}\t{v['VersionId']}\t{'current' if v['IsLatest'] else 'noncurrent'}\tversion")
        for m in page.get("DeleteMarkers", []):
            print(f"{m['Key']}\t{m['VersionId']}\t{'current' if m['IsLatest'] else 'noncurrent'}\tmarker")
else:
    sys.exit(f"unknown op {op}")
