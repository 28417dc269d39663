#!/usr/bin/env python3
"""Writes k8s/seccomp/tracer.json: a container runtime's default seccomp profile, evaluated for
the agent's capabilities, plus exactly the system calls the agent needs beyond it.

The input is a default profile in the Docker/Podman format (the one containers-common ships as
/usr/share/containers/seccomp.json, where rules may depend on capabilities and architectures).
The output is flat OCI format (`defaultAction`, `architectures`, `syscalls` with names, action,
args), which containerd, CRI-O, Docker and Podman all accept as a Localhost profile:
  - rules that `includes` capabilities are kept only when the agent has all of them;
  - rules that `excludes` capabilities are kept only when the agent has none of them;
  - rules limited to architectures are kept for x86-64 (the image this project builds), and the
    profile lists x86-64 with its 32-bit sub-architectures only: runc refuses to add a foreign
    architecture (aarch64 on an x86-64 node) to a filter;
  - the agent's additions are allowed, and removed from every rule that refused them.

    python3 k8s/seccomp/generate.py [/usr/share/containers/seccomp.json] > k8s/seccomp/tracer.json
"""
import json
import sys

# The capabilities k8s/base/daemonset.yaml grants (keep in step with it).
AGENT_CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
# What the agent calls that default profiles allow only with CAP_SYS_ADMIN.
ADDITIONS = {
    "bpf": "create maps, load programs, read the ring buffer (the kernel checks CAP_BPF and "
    "CAP_PERFMON)",
    "perf_event_open": "attach programs to tracepoints (the kernel checks CAP_PERFMON)",
}
# The node architecture: its name in `includes.arches` rules, and its seccomp architecture.
ARCHES = {"amd64", "x86", "x32"}
NATIVE = "SCMP_ARCH_X86_64"


def keep(rule):
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("caps") and not set(includes["caps"]) <= AGENT_CAPS:
        return False
    if excludes.get("caps") and set(excludes["caps"]) & AGENT_CAPS:
        return False
    if includes.get("arches") and not set(includes["arches"]) & ARCHES:
        return False
    if excludes.get("arches") and set(excludes["arches"]) <= ARCHES:
        return False
    if includes.get("minKernel") or excludes.get("minKernel"):
        return False
    return True


def main():
    source = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/containers/seccomp.json"
    with open(source) as f:
        default = json.load(f)
    architectures = []
    for entry in default.get("archMap") or []:
        if entry["architecture"] == NATIVE:
            architectures.append(entry["architecture"])
            architectures.extend(entry.get("subArchitectures") or [])
    syscalls = []
    for rule in default["syscalls"]:
        if not keep(rule):
            continue
        names = [name for name in rule["names"] if name not in ADDITIONS]
        if not names:
            continue
        out = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            out["args"] = rule["args"]
        errno = rule.get("errnoRet")
        if errno is not None:
            out["errnoRet"] = errno
        syscalls.append(out)
    for name, why in ADDITIONS.items():
        syscalls.append({"names": [name], "action": "SCMP_ACT_ALLOW", "comment": f"tracer: {why}"})
    profile = {"defaultAction": default["defaultAction"]}
    if default.get("defaultErrnoRet") is not None:
        profile["defaultErrnoRet"] = default["defaultErrnoRet"]
    profile["architectures"] = architectures
    profile["syscalls"] = syscalls
    json.dump(profile, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
