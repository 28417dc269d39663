#!/usr/bin/env bash
# Validates the Kubernetes manifests under k8s/ against the Kubernetes OpenAPI schemas in strict
# mode (unknown fields are errors), for a fixed Kubernetes version:
#   1. every resource listed in base/kustomization.yaml, one file at a time;
#   2. the rendered kustomization k8s/ (`kubectl kustomize` or `kustomize build` when available,
#      else the base resources concatenated in order), which must hold every expected kind;
#   3. the rendered k8s/privileged and k8s/overlays/context-propagation overlays, when a kustomize
#      renderer is available;
#   4. the Localhost seccomp profile the DaemonSet names.
# Installs the `kubernetes-validate` Python package when it is missing.
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.33.0}"
VALIDATOR_REQUIREMENT="kubernetes-validate==1.37.0"
EXPECTED_KINDS="ClusterRole ClusterRoleBinding ConfigMap DaemonSet Namespace NetworkPolicy ServiceAccount"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

python="${PYTHON:-python3}"
if ! "$python" -c 'import kubernetes_validate' 2>/dev/null; then
    echo "installing $VALIDATOR_REQUIREMENT" >&2
    "$python" -m pip install --quiet --disable-pip-version-check "$VALIDATOR_REQUIREMENT" \
        || "$python" -m pip install --quiet --disable-pip-version-check --user \
            --no-warn-script-location --break-system-packages "$VALIDATOR_REQUIREMENT"
fi

validate() {
    "$python" -m kubernetes_validate --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" "$@"
}

# Renders the kustomization in directory $1 to stdout; fails when no renderer is installed.
render() {
    if command -v kubectl >/dev/null 2>&1; then
        kubectl kustomize "$1"
    elif command -v kustomize >/dev/null 2>&1; then
        kustomize build "$1"
    else
        return 127
    fi
}

# The resources base/kustomization.yaml lists, in order (`- file.yaml` lines under resources:).
mapfile -t resources < <(awk '
    /^resources:/ { in_list = 1; next }
    /^[^ #-]/     { in_list = 0 }
    in_list && /^ *- / { sub(/^ *- */, ""); sub(/ *#.*$/, ""); print }
' base/kustomization.yaml)
if [ "${#resources[@]}" -eq 0 ]; then
    echo "FAIL: base/kustomization.yaml lists no resources" >&2
    exit 1
fi

# Every manifest in base/ must be listed, or `kubectl apply -k` would silently skip it.
for file in base/*.yaml; do
    name="${file#base/}"
    [ "$name" = kustomization.yaml ] && continue
    listed=0
    for resource in "${resources[@]}"; do
        [ "$resource" = "$name" ] && listed=1
    done
    if [ "$listed" -eq 0 ]; then
        echo "FAIL: $file is not listed in base/kustomization.yaml" >&2
        exit 1
    fi
done

passed=0
failed=0
check() { # description, then a command that must succeed
    local description="$1"
    shift
    if "$@"; then
        echo "ok: $description"
        passed=$((passed + 1))
    else
        echo "FAIL: $description" >&2
        failed=$((failed + 1))
    fi
}

for resource in "${resources[@]}"; do
    check "base/$resource" validate "base/$resource"
done

rendered="$(mktemp)"
overlay="$(mktemp)"
trap 'rm -f "$rendered" "$overlay"' EXIT
if render . >"$rendered" 2>/dev/null; then
    renderer="rendered"
else
    renderer="base resources concatenated: no kustomize renderer"
    : >"$rendered"
    for resource in "${resources[@]}"; do
        { echo "---"; cat "base/$resource"; } >>"$rendered"
    done
fi
check "kustomization k8s/ ($renderer)" validate - <"$rendered"
for kind in $EXPECTED_KINDS; do
    check "k8s/ holds a $kind" grep -q "^kind: $kind\$" "$rendered"
done

if render privileged >"$overlay" 2>/dev/null; then
    check "kustomization k8s/privileged" validate - <"$overlay"
    check "k8s/privileged runs the agent privileged" grep -q "privileged: true" "$overlay"
else
    echo "skipped: k8s/privileged (needs kubectl or kustomize to render its patch)"
fi

if render overlays/context-propagation >"$overlay" 2>/dev/null; then
    check "kustomization k8s/overlays/context-propagation" validate - <"$overlay"
    check "k8s/overlays/context-propagation turns the mode on" \
        grep -q -- "- --context-propagation=tcp-options" "$overlay"
    check "k8s/overlays/context-propagation adds CAP_NET_ADMIN to the base's" \
        "$python" -c '
import sys
text = open(sys.argv[1]).read()
for cap in ("BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"):
    assert "- " + cap + "\n" in text, cap
assert "privileged: true" not in text, "the overlay must not run the agent privileged"
assert "mountPath: /sys/fs/cgroup" in text and "path: /sys/fs/cgroup" in text, "cgroup v2 mount"
' "$overlay"
else
    echo "skipped: k8s/overlays/context-propagation (needs kubectl or kustomize to render its patch)"
fi

# The seccomp profile the DaemonSet names (Localhost) must exist, parse, and allow what the agent
# needs beyond runtime defaults; tests/tests/container.rs proves it in a real runtime.
profile="$(awk '/localhostProfile:/ { print $2 }' base/daemonset.yaml)"
check "seccomp/$profile allows bpf and perf_event_open" "$python" -c '
import json, sys
profile = json.load(open(sys.argv[1]))
allowed = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
           and not rule.get("args") for name in rule["names"]}
assert profile["defaultAction"] != "SCMP_ACT_ALLOW", "the profile must deny by default"
assert {"bpf", "perf_event_open"} <= allowed, "bpf and perf_event_open must be allowed"
' "seccomp/$profile"

echo "validated against Kubernetes $KUBERNETES_VERSION schemas, strict"
echo "manifests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
