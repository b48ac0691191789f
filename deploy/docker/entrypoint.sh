#!/bin/bash
# Serve $MODEL_REPOSITORY with this image's backends (onnxruntime, openvino, tensorrt, python).
#
# A repository built for TARGET=local runs its detector through the onnxruntime *Python package*,
# which this image does not carry: it is refused with one line instead of failing at first request.
# With an admin key (file $ADMIN_KEY_FILE, e.g. a mounted Kubernetes secret, or $TRITON_ADMIN_KEY),
# the operator APIs require the header `admin-key: <key>`; health, metadata and inference stay open.
set -euo pipefail
repo="${MODEL_REPOSITORY:-/models}"
if [[ "$repo" != *://* ]]; then  # object storage (s3://, gs://, as://) is read by Triton itself
    record="$repo/repository.json"
    target=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("target", "unknown"))' "$record" \
             2>/dev/null || echo "missing ($record not found)")
    case "$target" in
        onnxruntime|openvino|tensorrt) ;;
        *) echo "error: $repo was built for target '$target'; this image serves onnxruntime, openvino or tensorrt" \
                "(rebuild with: make repo TARGET=onnxruntime)" >&2
           exit 2 ;;
    esac
fi
key="${TRITON_ADMIN_KEY:-}"
key_file="${ADMIN_KEY_FILE:-/var/run/secrets/yolo-triton/admin-key}"
if [[ -z "$key" && -r "$key_file" ]]; then
    key=$(<"$key_file")
fi
restricted=()
if [[ -n "$key" ]]; then
    apis="model-repository,model-config,shared-memory,statistics,trace,logging"  # = tools.server.RESTRICTED_APIS
    restricted=("--http-restricted-api=$apis:admin-key=$key" "--grpc-restricted-protocol=$apis:admin-key=$key")
fi
exec tritonserver --model-repository="$repo" "${restricted[@]}" "$@"
