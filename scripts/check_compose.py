"""Validates docker-compose.yml and the Dockerfile without a Docker engine.

Checks the structure Compose requires and what fedsql promises: the fedsql
service builds from this repo's Dockerfile, publishes the Postgres-wire port
on loopback, and keeps its data in a named volume.
"""

import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
errors = []

compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose.get("services") or {}
fedsql = services.get("fedsql")
if not fedsql:
    errors.append("docker-compose.yml has no fedsql service")
else:
    build = fedsql.get("build") or {}
    dockerfile = root / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    if not dockerfile.exists():
        errors.append(f"build points at {dockerfile}, which does not exist")
    ports = [str(p) for p in fedsql.get("ports", [])]
    if "127.0.0.1:5433:5433" not in ports:
        errors.append(f"fedsql must publish 127.0.0.1:5433:5433, has {ports}")
    if "127.0.0.1:50051:50051" not in ports:
        errors.append(f"fedsql must publish Flight SQL as 127.0.0.1:50051:50051, has {ports}")
    env = fedsql.get("environment") or {}
    # fedsql refuses unauthenticated Flight SQL on 0.0.0.0 (the container's
    # address), so the service must configure a password.
    if env.get("FEDSQL_PASSWORD_ENV") != "FEDSQL_PASSWORD" or "FEDSQL_PASSWORD" not in env:
        errors.append("fedsql must set FEDSQL_PASSWORD_ENV=FEDSQL_PASSWORD and FEDSQL_PASSWORD")
    for port in ports:
        if not port.startswith("127.0.0.1:"):
            errors.append(f"port {port} is not bound to loopback")
    declared = set((compose.get("volumes") or {}).keys())
    for volume in fedsql.get("volumes", []):
        name = str(volume).split(":")[0]
        if not name.startswith((".", "/")) and name not in declared:
            errors.append(f"volume {name} is used but not declared")
for name, service in services.items():
    if "image" not in service and "build" not in service:
        errors.append(f"service {name} has neither image nor build")
    for port in service.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            errors.append(f"service {name}: port {port} is not bound to loopback")
    for dependency in service.get("depends_on") or {}:
        if dependency not in services:
            errors.append(f"service {name} depends on {dependency}, which is not defined")
    for volume in service.get("volumes", []):
        volume_name = str(volume).split(":")[0]
        if not volume_name.startswith((".", "/")) and volume_name not in (compose.get("volumes") or {}):
            errors.append(f"service {name}: volume {volume_name} is used but not declared")
# Three federated sites that dial out to the coordinator, each with its own
# database; their configs exist.
configs = compose.get("configs") or {}
for region in ("eu", "us", "apac"):
    site = services.get(f"site-{region}")
    if not site:
        errors.append(f"no site-{region} service")
        continue
    command = [str(c) for c in site.get("command", [])]
    if command[:2] != ["fedsql", "site"] or "--coordinator" not in command:
        errors.append(f"site-{region} must run `fedsql site --coordinator …`, runs {command}")
    if site.get("ports"):
        errors.append(f"site-{region} publishes ports; sites only dial out")
    for config in site.get("configs", []):
        if config.get("source") not in configs:
            errors.append(f"site-{region} uses config {config.get('source')}, which is not defined")
    if f"pg-{region}" not in services:
        errors.append(f"site-{region} has no database service pg-{region}")
kafka = services.get("kafka")
if not kafka or not str(kafka.get("image", "")).startswith("apache/kafka:"):
    errors.append("a kafka service with Apache's official image (apache/kafka) is expected")

dockerfile_text = (root / "Dockerfile").read_text()
if len(re.findall(r"^FROM ", dockerfile_text, re.M)) < 2:
    errors.append("Dockerfile should be a multi-stage build")
if "fedsql\", \"serve\"" not in dockerfile_text:
    errors.append("Dockerfile CMD does not run fedsql serve")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"docker-compose.yml ok: services {sorted(services)}")
