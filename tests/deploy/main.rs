//! The Kubernetes manifests in `deploy/`, checked offline: `kubectl kustomize` renders them,
//! every object is validated against Kubernetes' own JSON schemas (vendored in `schemas/`,
//! strict, so an unknown or misspelt field fails), and the meshca configs they carry are
//! loaded by the real binary with the environment and flags the pods would give it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

mod attestation;
mod rbac;

/// The namespace `deploy/kustomization.yaml` puts everything in.
const NAMESPACE: &str = "meshca";

/// Stands in for the `meshca-store` Secret, which operators create.
const PLACEHOLDER_STORE_URL: &str = "postgres://meshca:placeholder@postgres.invalid:5432/meshca";

/// Kubernetes' JSON schemas, compiled once.
struct Validator {
    schemas: boon::Schemas,
    by_file: BTreeMap<String, boon::SchemaIndex>,
}

// === helpers ===

fn workspace_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
}

/// Every object `kubectl kustomize deploy/` renders, in order.
fn objects() -> &'static [Value] {
    static OBJECTS: OnceLock<Vec<Value>> = OnceLock::new();
    OBJECTS.get_or_init(|| parse_stream(&kustomize(&workspace_dir().join("deploy"))))
}

fn kustomize(dir: &Path) -> String {
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let out = match Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{kubectl:?} not found: these tests render deploy/ with `kubectl kustomize` \
             (offline, no cluster needed); install kubectl or point KUBECTL at it"
        ),
        Err(e) => panic!("running {kubectl:?}: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kustomize prints UTF-8")
}

/// Splits a multi-document YAML stream into JSON values (what the schemas speak).
fn parse_stream(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("rendered YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn object(kind: &str, name: &str) -> &'static Value {
    objects()
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("deploy/ renders no {kind} {name}"))
}

fn describe(o: &Value) -> String {
    format!(
        "{} {}/{}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["namespace"].as_str().unwrap_or("-"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// `deployment-apps-v1.json`, `service-v1.json`, `clusterrolebinding-rbac-v1.json`: the
/// naming of the kubernetes-json-schema directories.
fn schema_file(api_version: &str, kind: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match api_version.split_once('/') {
        Some((group, version)) => {
            let group = group.split('.').next().unwrap_or(group);
            format!("{kind}-{group}-{version}.json")
        }
        None => format!("{kind}-{api_version}.json"),
    }
}

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/schemas");
        let mut compiler = boon::Compiler::new();
        let mut kinds = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("tests/deploy/schemas exists") {
            let path = entry.expect("readable dir").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("readable schema");
            let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            // Registered under its own `$id`: `$ref`s resolve here, never over the network.
            let id = doc["$id"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no $id"))
                .to_string();
            compiler
                .add_resource(&id, doc)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if name != "_definitions.json" {
                kinds.push((name, id));
            }
        }
        let mut schemas = boon::Schemas::new();
        let by_file = kinds
            .into_iter()
            .map(|(name, id)| {
                let index = compiler
                    .compile(&id, &mut schemas)
                    .unwrap_or_else(|e| panic!("compiling {name}: {e:#}"));
                (name, index)
            })
            .collect();
        Validator { schemas, by_file }
    })
}

/// The pod template's container named `name`.
fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{} has no container {name}", describe(workload)))
}

fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{} has no volume {name}", describe(workload)))
}

/// The container's mount of the volume whose source satisfies `pick`.
fn mount_of<'a>(
    workload: &'a Value,
    container: &'a Value,
    pick: impl Fn(&Value) -> bool,
) -> (&'a Value, &'a Value) {
    let volumes = workload["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten();
    for vol in volumes.filter(|v| pick(v)) {
        let mount = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == vol["name"]);
        if let Some(mount) = mount {
            return (vol, mount);
        }
    }
    panic!("{}: no mounted volume matches", describe(workload))
}

/// A probe's or Service's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().expect("a port number"),
        Value::String(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container {} has no port named {name}", container["name"])),
        other => panic!("not a port: {other}"),
    }
}

/// The `meshca.toml` a ConfigMap carries, parsed.
fn config_map_toml(name: &str) -> toml::Table {
    let text = object("ConfigMap", name)["data"]["meshca.toml"]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no meshca.toml"));
    toml::from_str(text).unwrap_or_else(|e| panic!("ConfigMap {name}: meshca.toml: {e}"))
}

/// `table["a"]["b"]…` as a string.
fn toml_str<'a>(table: &'a toml::Table, path: &[&str]) -> &'a str {
    let (last, sections) = path.split_last().expect("a key");
    let mut t = table;
    for s in sections {
        t = t
            .get(*s)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("no [{s}] on the way to {}", path.join(".")));
    }
    t.get(*last)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("{} is not set", path.join(".")))
}

/// The real `meshca` binary. The same build as `tests/e2e/harness.rs`, so a
/// `cargo test --workspace` run builds it once for both.
fn meshca_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args([
                "build",
                "--workspace",
                "--bins",
                "--tests",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(workspace_dir())
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(out.status.success(), "building meshca failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["reason"] == "compiler-artifact"
                    && v["target"]["name"] == "meshca"
                    && v["profile"]["test"] == false
            })
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo built the meshca binary")
    })
}

/// What `meshca config` answered.
struct ConfigRun {
    /// The effective config (TOML, passwords redacted).
    effective: toml::Table,
    stdout: String,
}

/// Runs `meshca config` the way `workload`'s container `name` runs meshca: its args with the
/// subcommand swapped for `config`, its ConfigMap's `meshca.toml`, its environment (values
/// from Secrets replaced by placeholders, downward-API fields resolved), plus `extra` flags.
fn meshca_config_as(workload: &Value, name: &str, extra: &[&str]) -> ConfigRun {
    let c = container(workload, name);
    let mut args: Vec<String> = c["args"]
        .as_array()
        .unwrap_or_else(|| panic!("{} sets no args", describe(workload)))
        .iter()
        .map(|a| a.as_str().expect("string args").to_string())
        .collect();
    assert!(
        matches!(args.first().map(String::as_str), Some("server" | "agent")),
        "{}: args should start with a meshca subcommand: {args:?}",
        describe(workload)
    );
    args[0] = "config".into();

    // The file `--config` names must be the `meshca.toml` of a mounted ConfigMap.
    let at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{}: no --config in {args:?}", describe(workload)));
    let config_path = PathBuf::from(&args[at + 1]);
    let dir = config_path.parent().expect("an absolute path");
    let mounted = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == dir.to_str().unwrap())
        .unwrap_or_else(|| {
            panic!(
                "{}: nothing is mounted at {}",
                describe(workload),
                dir.display()
            )
        });
    let config_map = volume(workload, mounted["name"].as_str().unwrap())["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a ConfigMap volume", dir.display()));
    let file_name = config_path.file_name().unwrap().to_str().unwrap();
    let text = object("ConfigMap", config_map)["data"][file_name]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {config_map} has no key {file_name}"));
    let scratch = tempfile::tempdir().unwrap();
    let local = scratch.path().join(file_name);
    std::fs::write(&local, text).unwrap();
    args[at + 1] = local.display().to_string();
    args.extend(extra.iter().map(|s| s.to_string()));

    let mut cmd = Command::new(meshca_bin());
    cmd.args(&args).stdin(Stdio::null());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MESHCA_")) {
        cmd.env_remove(key);
    }
    let pod = &workload["spec"]["template"]["spec"];
    for var in c["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name");
        let value = if let Some(v) = var["value"].as_str() {
            v.to_string()
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.namespace" => workload["metadata"]["namespace"].as_str().unwrap().into(),
                "spec.serviceAccountName" => pod["serviceAccountName"].as_str().unwrap().into(),
                "spec.nodeName" => "worker-1".into(),
                other => panic!("{name}: no stand-in for fieldRef {other}"),
            }
        } else if !var["valueFrom"]["secretKeyRef"].is_null() {
            match name {
                "MESHCA_STORE_URL" => PLACEHOLDER_STORE_URL.into(),
                other => panic!("{other}: no placeholder for this Secret value"),
            }
        } else {
            panic!("{name}: unsupported env source {var}")
        };
        cmd.env(name, value);
    }
    let out = cmd.output().expect("meshca runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "meshca {} failed for {}:\n{stderr}\n--- {config_map}/{file_name} ---\n{text}",
        args.join(" "),
        describe(workload)
    );
    // An env var that is not a config key only warns; in a manifest it is a mistake.
    assert!(
        !stderr.contains("unknown environment variable"),
        "{}: {stderr}",
        describe(workload)
    );
    let effective =
        toml::from_str(&stdout).unwrap_or_else(|e| panic!("meshca config printed bad TOML: {e}"));
    ConfigRun { effective, stdout }
}

// === tests ===

#[test]
fn every_object_matches_its_kubernetes_schema() {
    let validator = validator();
    assert!(!objects().is_empty(), "kustomize rendered nothing");
    let mut failures = Vec::new();
    for o in objects() {
        let (Some(api_version), Some(kind)) = (o["apiVersion"].as_str(), o["kind"].as_str()) else {
            failures.push(format!("{}: no apiVersion/kind", describe(o)));
            continue;
        };
        let file = schema_file(api_version, kind);
        let Some(index) = validator.by_file.get(&file) else {
            failures.push(format!(
                "{}: no schema {file} in tests/deploy/schemas (see its README.md)",
                describe(o)
            ));
            continue;
        };
        if let Err(e) = validator.schemas.validate(o, *index) {
            failures.push(format!("{} ({file}):\n{e}", describe(o)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn everything_lives_in_the_meshca_namespace() {
    object("Namespace", NAMESPACE);
    for o in objects() {
        let cluster_scoped = matches!(
            o["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        );
        if !cluster_scoped {
            assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{}", describe(o));
        }
    }
}

#[test]
fn no_secret_is_shipped() {
    // Operators create the key material; the base only refers to it by name.
    for o in objects() {
        assert_ne!(
            o["kind"],
            "Secret",
            "{} must not be in deploy/",
            describe(o)
        );
    }
}

#[test]
fn server_runs_three_probed_replicas() {
    let d = object("Deployment", "meshca");
    assert_eq!(d["spec"]["replicas"], 3);
    let c = container(d, "meshca");
    let readiness = &c["readinessProbe"]["httpGet"];
    let liveness = &c["livenessProbe"]["httpGet"];
    assert_eq!(readiness["path"], "/readyz");
    assert_eq!(liveness["path"], "/healthz");
    assert_eq!(resolve_port(c, &readiness["port"]), 15014);
    assert_eq!(resolve_port(c, &liveness["port"]), 15014);
    let ports: Vec<u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    for port in [15012, 8443, 15014] {
        assert!(
            ports.contains(&port),
            "container port {port} missing: {ports:?}"
        );
    }

    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource} unset"
            );
        }
    }

    // The budget covers the same pods.
    let pdb = object("PodDisruptionBudget", "meshca");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn cacerts_secret_is_mounted_as_the_configured_directory() {
    let d = object("Deployment", "meshca");
    let c = container(d, "meshca");
    let (vol, mount) = mount_of(d, c, |v| v["secret"]["secretName"] == "cacerts");
    // A directory mount: with subPath, Kubernetes never updates the files and a rotated
    // cacerts Secret would not reach meshca.
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "cacerts must be mounted as a directory: {mount}"
    );
    // No `items`: the keys (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) become
    // the file names meshca looks for.
    assert!(vol["secret"]["items"].is_null(), "{vol}");
    assert_eq!(mount["readOnly"], true);
    let config = config_map_toml("meshca");
    assert_eq!(
        toml_str(&config, &["ca", "cacerts_dir"]),
        mount["mountPath"].as_str().unwrap()
    );
}

#[test]
fn key_encryption_key_is_a_private_read_only_mount() {
    let d = object("Deployment", "meshca");
    let c = container(d, "meshca");
    let config = config_map_toml("meshca");
    let kek = Path::new(toml_str(&config, &["ca", "key_encryption_key_file"]));
    let (vol, mount) = mount_of(d, c, |v| {
        v["secret"].is_object() && v["secret"]["secretName"] != "cacerts"
    });
    assert_eq!(
        Path::new(mount["mountPath"].as_str().unwrap()),
        kek.parent().unwrap(),
        "ca.key_encryption_key_file must sit in the KEK Secret's mount"
    );
    assert_eq!(mount["readOnly"], true);
    let mode = vol["secret"]["defaultMode"]
        .as_u64()
        .expect("defaultMode set");
    assert!(mode == 0o400 || mode == 0o440, "defaultMode {mode:o}");
    // Every replica must unseal the same keys: the Secret is required, not optional.
    assert_ne!(vol["secret"]["optional"], true);
}

#[test]
fn services_reach_the_server_ports() {
    let d = object("Deployment", "meshca");
    let c = container(d, "meshca");
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    for (service, port) in [("meshca", 15012_u64), ("meshca-admin", 8443)] {
        let s = object("Service", service);
        for (k, v) in s["spec"]["selector"].as_object().expect("a selector") {
            assert_eq!(
                &pod_labels[k], v,
                "Service {service} does not select the server"
            );
        }
        let p = s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == port)
            .unwrap_or_else(|| panic!("Service {service} has no port {port}"));
        assert_eq!(resolve_port(c, &p["targetPort"]), port);
    }
    let grpc = object("Service", "meshca")["spec"]["ports"][0].clone();
    assert_eq!(grpc["name"], "grpc-ca");
}

#[test]
fn server_config_is_accepted_by_meshca() {
    let d = object("Deployment", "meshca");
    // `ca.cacerts_dir` names the Secret mount, which exists only in the pod: hand the loader
    // a real Istio-layout directory instead (the flag beats the file).
    let cacerts = tempfile::tempdir().unwrap();
    meshca_ca::testing::GeneratedChain::new(meshca_ca::KeyType::EcP256).write(cacerts.path());
    let run = meshca_config_as(
        d,
        "meshca",
        &["--cacerts-dir", cacerts.path().to_str().unwrap()],
    );
    assert!(run.stdout.contains("# CA: plugged-in"), "{}", run.stdout);
    let c = &run.effective;
    assert_eq!(toml_str(c, &["rest", "listen"]), "0.0.0.0:8443");
    assert_eq!(toml_str(c, &["metrics", "listen"]), "0.0.0.0:15014");
    assert_eq!(toml_str(c, &["grpc", "listen"]), "0.0.0.0:15012");
    // From MESHCA_STORE_URL, password redacted.
    let store = toml_str(c, &["store", "url"]);
    assert!(store.starts_with("postgres://"), "{store}");
    assert!(
        !store.contains("placeholder"),
        "password not redacted: {store}"
    );
    let dns: Vec<&str> = c["grpc"]["dns_names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    for name in ["meshca.meshca.svc", "meshca.meshca.svc.cluster.local"] {
        assert!(dns.contains(&name), "grpc.dns_names lacks {name}: {dns:?}");
    }
    let audiences = &c["auth"]["clusters"]["Kubernetes"]["audiences"];
    assert!(
        audiences
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some("istio-ca")),
        "{audiences}"
    );
}

#[test]
fn agent_config_is_accepted_by_meshca() {
    let ds = object("DaemonSet", "meshca-agent");
    let run = meshca_config_as(ds, "agent", &[]);
    let c = &run.effective;
    // The identity comes from the pod through the downward API.
    assert_eq!(toml_str(c, &["agent", "namespace"]), NAMESPACE);
    assert_eq!(toml_str(c, &["agent", "service_account"]), "meshca-agent");
    object("ServiceAccount", "meshca-agent");
    // It dials the Service in front of the server.
    let ca_addr = toml_str(c, &["agent", "ca_addr"]);
    let grpc_port = object("Service", "meshca")["spec"]["ports"][0]["port"]
        .as_u64()
        .unwrap();
    assert_eq!(ca_addr, format!("meshca.{NAMESPACE}.svc:{grpc_port}"));
    assert_eq!(toml_str(c, &["agent", "metrics_listen"]), "0.0.0.0:15020");
}

#[test]
fn agent_mounts_what_its_config_names() {
    let ds = object("DaemonSet", "meshca-agent");
    let c = container(ds, "agent");
    let config = config_map_toml("meshca-agent");
    let under = |path: &str, mount: &Value| {
        Path::new(path).parent().unwrap() == Path::new(mount["mountPath"].as_str().unwrap())
    };

    let (vol, mount) = mount_of(ds, c, |v| v["projected"].is_object());
    let token = &vol["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "istio-ca");
    assert!(under(toml_str(&config, &["agent", "token_file"]), mount));

    let (_, mount) = mount_of(ds, c, |v| v["configMap"]["name"] == "meshca-root-cert");
    assert!(under(toml_str(&config, &["agent", "ca_root_cert"]), mount));

    let (vol, mount) = mount_of(ds, c, |v| v["hostPath"].is_object());
    assert_eq!(vol["hostPath"]["type"], "DirectoryOrCreate");
    for socket in ["sds_socket", "workload_api_socket"] {
        assert!(
            under(toml_str(&config, &["agent", socket]), mount),
            "agent.{socket} is not in the hostPath mount"
        );
    }

    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/readyz");
    assert_eq!(resolve_port(c, &probe["port"]), 15020);
}
