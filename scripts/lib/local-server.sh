# Sourced by scripts/s3-server.sh and scripts/s3s-server.sh: what starting
# a local S3 server on 127.0.0.1 takes, whichever server it is.

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits up to 10 s for 127.0.0.1:PORT to accept connections, then prints
# http://127.0.0.1:PORT and exits 0; else says NAME did not start (see LOG)
# and exits 1.
serve_endpoint_when_up() {
  local name="$1" port="$2" log="$3"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "http://127.0.0.1:$port"
      exit 0
    fi
    sleep 0.1
  done
  echo "$name did not start; see $log" >&2
  exit 1
}
