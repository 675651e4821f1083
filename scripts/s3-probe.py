"""Asks an S3-compatible server the questions git-s3 depends on and prints
one line per answer: conditional writes (PutObject, CompleteMultipartUpload),
conditional and ranged reads, ListObjectsV2 paging and URL encoding,
multipart ETags, CopyObject, DeleteObjects, checksums and error codes.

    .test-env/venv/bin/python scripts/s3-probe.py ENDPOINT [ACCESS_KEY SECRET_KEY]

Run it against moto and against s3s-fs and compare (docs/s3-implementations.md
records the result). It creates one bucket named probe-<pid> and leaves it.
"""
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint = sys.argv[1]
key_id, secret = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("test", "test")
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id=key_id,
    aws_secret_access_key=secret,
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
bucket = f"probe-{os.getpid()}"


def show(what, fn):
    try:
        r = fn()
        meta = r.get("ResponseMetadata", {}) if isinstance(r, dict) else {}
        extra = ""
        if isinstance(r, dict):
            for k in ("ETag", "ContentRange", "ChecksumCRC32", "ChecksumType", "KeyCount", "IsTruncated", "EncodingType"):
                if k in r:
                    extra += f" {k}={r[k]}"
        print(f"{what}: {meta.get('HTTPStatusCode', '?')}{extra}")
        return r
    except ClientError as e:
        err = e.response.get("Error", {})
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        print(f"{what}: {status} {err.get('Code')} ({err.get('Message', '')[:80]})")
        return None


s3.create_bucket(Bucket=bucket)
b = bucket

# Conditional PutObject.
r = show("put new key If-None-Match:*", lambda: s3.put_object(Bucket=b, Key="c/a", Body=b"1", IfNoneMatch="*"))
etag1 = r["ETag"] if r else None
show("put existing key If-None-Match:*", lambda: s3.put_object(Bucket=b, Key="c/a", Body=b"2", IfNoneMatch="*"))
r = show("put If-Match current etag", lambda: s3.put_object(Bucket=b, Key="c/a", Body=b"3", IfMatch=etag1))
show("put If-Match stale etag", lambda: s3.put_object(Bucket=b, Key="c/a", Body=b"4", IfMatch=etag1))
show("put If-Match on a missing key", lambda: s3.put_object(Bucket=b, Key="c/missing", Body=b"5", IfMatch=etag1))
print("body after the refused writes:", s3.get_object(Bucket=b, Key="c/a")["Body"].read())

# Multipart, plain and conditional.
part = b"x" * (5 * 1024 * 1024)


def multipart(key, **cond):
    u = s3.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
    p1 = s3.upload_part(Bucket=b, Key=key, UploadId=u, PartNumber=1, Body=part)["ETag"]
    p2 = s3.upload_part(Bucket=b, Key=key, UploadId=u, PartNumber=2, Body=b"tail")["ETag"]
    parts = {"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]}
    return lambda: s3.complete_multipart_upload(Bucket=b, Key=key, UploadId=u, MultipartUpload=parts, **cond)


r = show("complete multipart (2 parts) If-None-Match:* on a new key", multipart("m/a", IfNoneMatch="*"))
metag = r["ETag"] if r else None
show("complete multipart If-None-Match:* on an existing key", multipart("m/a", IfNoneMatch="*"))
show("complete multipart If-Match stale etag", multipart("m/a", IfMatch='"0123456789abcdef0123456789abcdef"'))
r = show("complete multipart If-Match current etag", multipart("m/a", IfMatch=metag))
show("head after multipart", lambda: s3.head_object(Bucket=b, Key="m/a"))
r = show("list multipart uploads", lambda: s3.list_multipart_uploads(Bucket=b))
if r:
    print("  uploads left open:", len(r.get("Uploads", [])))
u = s3.create_multipart_upload(Bucket=b, Key="m/aborted")["UploadId"]
show("abort multipart", lambda: s3.abort_multipart_upload(Bucket=b, Key="m/aborted", UploadId=u))
show("complete with a wrong part etag", lambda: s3.complete_multipart_upload(
    Bucket=b, Key="m/bad", UploadId=s3.create_multipart_upload(Bucket=b, Key="m/bad")["UploadId"],
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]}))

# Reads: ranged, conditional.
s3.put_object(Bucket=b, Key="r/obj", Body=bytes(range(100)))
etag = s3.head_object(Bucket=b, Key="r/obj")["ETag"]
show("get Range bytes=10-19", lambda: s3.get_object(Bucket=b, Key="r/obj", Range="bytes=10-19"))
show("get Range bytes=-5", lambda: s3.get_object(Bucket=b, Key="r/obj", Range="bytes=-5"))
show("get Range bytes=90-200", lambda: s3.get_object(Bucket=b, Key="r/obj", Range="bytes=90-200"))
show("get Range bytes=200-", lambda: s3.get_object(Bucket=b, Key="r/obj", Range="bytes=200-"))
show("get Range + If-Match current", lambda: s3.get_object(Bucket=b, Key="r/obj", Range="bytes=0-1", IfMatch=etag))
show("get Range + If-Match stale", lambda: s3.get_object(Bucket=b, Key="r/obj", Range="bytes=0-1", IfMatch='"00"'))
show("get If-None-Match current (expect 304)", lambda: s3.get_object(Bucket=b, Key="r/obj", IfNoneMatch=etag))
show("get missing key", lambda: s3.get_object(Bucket=b, Key="r/none"))
show("head missing key", lambda: s3.head_object(Bucket=b, Key="r/none"))
show("get from a missing bucket", lambda: s3.get_object(Bucket=b + "-none", Key="x"))
show("list a missing bucket", lambda: s3.list_objects_v2(Bucket=b + "-none"))

# Checksums.
show("put with CRC32", lambda: s3.put_object(Bucket=b, Key="k/crc", Body=b"abc", ChecksumAlgorithm="CRC32"))
show("get ChecksumMode=ENABLED", lambda: s3.get_object(Bucket=b, Key="k/crc", ChecksumMode="ENABLED"))
show("put with a wrong Content-MD5", lambda: s3.put_object(Bucket=b, Key="k/md5", Body=b"abc", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA=="))

# Copy, delete.
show("copy", lambda: s3.copy_object(Bucket=b, Key="r/copy", CopySource={"Bucket": b, "Key": "r/obj"}))
show("copy a missing source", lambda: s3.copy_object(Bucket=b, Key="r/copy2", CopySource={"Bucket": b, "Key": "r/none"}))
r = show("delete-objects (one missing)", lambda: s3.delete_objects(
    Bucket=b, Delete={"Objects": [{"Key": "r/copy"}, {"Key": "r/never"}]}))
if r:
    print("  deleted:", [d["Key"] for d in r.get("Deleted", [])], "errors:", r.get("Errors", []))
show("delete a missing key", lambda: s3.delete_object(Bucket=b, Key="r/never"))

# Keys that a file system stores awkwardly.
for key in ["f/x", "f/x/y", "f/sp ace+plus%25", "f/ünï", "f/a.", "f//double", "f/./dot", "f/tab\tkey"]:
    show(f"put key {key!r}", lambda key=key: s3.put_object(Bucket=b, Key=key, Body=b"k"))

# Listing: paging and URL encoding.
for i in range(5):
    s3.put_object(Bucket=b, Key=f"l/k{i}", Body=b"")
page = show("list MaxKeys=2", lambda: s3.list_objects_v2(Bucket=b, Prefix="l/", MaxKeys=2))
keys, token, pages = [], None, 0
while True:
    kw = {"ContinuationToken": token} if token else {}
    p = s3.list_objects_v2(Bucket=b, Prefix="l/", MaxKeys=2, **kw)
    pages += 1
    keys += [o["Key"] for o in p.get("Contents", [])]
    if not p.get("IsTruncated"):
        break
    token = p["NextContinuationToken"]
print(f"list paged: {pages} pages, {len(keys)} keys, sorted={keys == sorted(keys)}")
show("list StartAfter=l/k2", lambda: s3.list_objects_v2(Bucket=b, Prefix="l/", StartAfter="l/k2"))
r = s3.list_objects_v2(Bucket=b, Prefix="f/", EncodingType="url")
print("list f/ EncodingType=url: answer says", r.get("EncodingType"), "keys", [o["Key"] for o in r.get("Contents", [])])
r = s3.list_objects_v2(Bucket=b, Prefix="f/", Delimiter="/")
print("list f/ Delimiter=/: prefixes", [p["Prefix"] for p in r.get("CommonPrefixes", [])],
      "keys", [o["Key"] for o in r.get("Contents", [])])
r = s3.list_objects_v2(Bucket=b, Prefix="l/k")
print("list Prefix=l/k (a partial name):", [o["Key"] for o in r.get("Contents", [])])

# Races: conditional writes are compare-and-swap only if the server checks
# and writes as one step. 8 writers at once, each with its own connection.
import threading


def race(what, key, **cond):
    results = []
    barrier = threading.Barrier(8)

    def one(i):
        c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id,
                         aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        body = f"writer {i}".encode() * 20000
        barrier.wait()
        try:
            c.put_object(Bucket=b, Key=key, Body=body, **cond)
            results.append(200)
        except ClientError as e:
            results.append(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{what}: {sorted(results)} ({results.count(200)} of 8 succeeded; 1 expected)")


for n in range(3):
    race(f"race {n}: 8 x put If-None-Match:* on one new key", f"race/new{n}")
    s3.put_object(Bucket=b, Key=f"race/cas{n}", Body=b"base")
    race(f"race {n}: 8 x put If-Match same etag", f"race/cas{n}", IfMatch=s3.head_object(Bucket=b, Key=f"race/cas{n}")["ETag"])
