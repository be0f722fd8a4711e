"""The event most tests act on: Falco's netcat rule firing in pod shop/web."""

CID = "0123456789ab"  # Falco reports the first 12 characters of the container id
FULL_CID = CID + "cd" * 26  # what the pod's status says
NETCAT = "Netcat Remote Code Execution in Container"
DELETE_POD_TABLE = """
defaults: {dry_run: false, max_pod_deletions_per_minute: %d}
rules:
  - name: kill-reverse-shells
    match: {rules: ["Netcat Remote Code Execution in Container"]}
    actions:
      - action: delete-pod
        params: {grace_period_seconds: 0}
"""


def netcat_event(uuid: str = "u-1", pod: str | None = "web", namespace: str = "shop",
                 hostname: str = "node-a", **fields) -> dict:
    return {"uuid": uuid, "rule": NETCAT, "priority": "Warning", "source": "syscall",
            "hostname": hostname,
            "output_fields": {"k8s.ns.name": namespace, "k8s.pod.name": pod,
                              "container.id": CID, **fields}}


def delete_pod_table(deletions_per_minute: int = 1000) -> str:
    return DELETE_POD_TABLE % deletions_per_minute
