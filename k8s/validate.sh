#!/usr/bin/env bash
# Validates the Kubernetes manifests in this directory against the Kubernetes OpenAPI schemas in
# strict mode (unknown fields are errors), for a fixed Kubernetes version:
#   1. every resource listed in kustomization.yaml, one file at a time;
#   2. the rendered kustomization (`kubectl kustomize` or `kustomize build` when available, else
#      the listed resources concatenated in order).
# Installs the `kubernetes-validate` Python package when it is missing.
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.33.0}"
VALIDATOR_REQUIREMENT="kubernetes-validate==1.37.0"
EXPECTED_KINDS="ClusterRole ClusterRoleBinding ConfigMap DaemonSet Namespace ServiceAccount"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

python="${PYTHON:-python3}"
if ! "$python" -c 'import kubernetes_validate' 2>/dev/null; then
    echo "installing $VALIDATOR_REQUIREMENT" >&2
    "$python" -m pip install --quiet --disable-pip-version-check "$VALIDATOR_REQUIREMENT" \
        || "$python" -m pip install --quiet --disable-pip-version-check --user --no-warn-script-location \
            --break-system-packages "$VALIDATOR_REQUIREMENT"
fi

validate() {
    "$python" -m kubernetes_validate --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" "$@"
}

# The resources the kustomization lists, in order (one `- file.yaml` per line under resources:).
mapfile -t resources < <(awk '
    /^resources:/ { in_list = 1; next }
    /^[^ #-]/     { in_list = 0 }
    in_list && /^ *- / { sub(/^ *- */, ""); sub(/ *#.*$/, ""); print }
' kustomization.yaml)
if [ "${#resources[@]}" -eq 0 ]; then
    echo "FAIL: kustomization.yaml lists no resources" >&2
    exit 1
fi

# Every manifest here must be listed, or `kubectl apply -k` would silently skip it.
for file in *.yaml; do
    [ "$file" = kustomization.yaml ] && continue
    listed=0
    for resource in "${resources[@]}"; do
        [ "$resource" = "$file" ] && listed=1
    done
    if [ "$listed" -eq 0 ]; then
        echo "FAIL: $file is not listed in kustomization.yaml" >&2
        exit 1
    fi
done

failures=0
for resource in "${resources[@]}"; do
    if validate "$resource"; then
        echo "ok: $resource"
    else
        echo "FAIL: $resource" >&2
        failures=$((failures + 1))
    fi
done

rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize . >"$rendered" 2>/dev/null; then
    renderer="kubectl kustomize"
elif command -v kustomize >/dev/null 2>&1 && kustomize build . >"$rendered" 2>/dev/null; then
    renderer="kustomize build"
else
    renderer="concatenated resources"
    : >"$rendered"
    for resource in "${resources[@]}"; do
        { echo "---"; cat "$resource"; } >>"$rendered"
    done
fi
if validate - <"$rendered"; then
    echo "ok: kustomization ($renderer)"
else
    echo "FAIL: kustomization ($renderer)" >&2
    failures=$((failures + 1))
fi
for kind in $EXPECTED_KINDS; do
    if ! grep -q "^kind: $kind\$" "$rendered"; then
        echo "FAIL: the kustomization renders no $kind" >&2
        failures=$((failures + 1))
    fi
done

total=$(( ${#resources[@]} + 1 ))
echo "k8s manifests: $((total - failures)) passed, $failures failed (Kubernetes $KUBERNETES_VERSION, strict)"
[ "$failures" -eq 0 ]
