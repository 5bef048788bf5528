//! `meshca server`: the CA in-process and the RA in front of it, until SIGINT/SIGTERM.

use meshca_ca::CertificateAuthority;
use meshca_ra::dev::{self, DevFiles};
use meshca_ra::{RaSettings, RunningRa};

use crate::config::MeshcaConfig;

pub async fn run(mut config: MeshcaConfig, dev_mode: bool) -> anyhow::Result<()> {
    let dev_files = DevFiles::under(&config.data_dir);
    if dev_mode {
        dev::write_dev_credentials(&dev_files)?;
        // The dev issuer's tokens, and whatever API server the file or environment names for
        // this cluster (node authorization and the root ConfigMaps use it).
        let cluster_id = meshca_ra::config::DEFAULT_CLUSTER_ID.to_string();
        let mut cluster = dev_files.cluster_config();
        if let Some(given) = config.auth.clusters.get(&cluster_id) {
            cluster.api_server_url = given.api_server_url.clone();
            cluster.api_server_ca_file = given.api_server_ca_file.clone();
            cluster.api_server_token_file = given.api_server_token_file.clone();
        }
        config.auth.clusters.insert(cluster_id, cluster);
        let tokens = dev::write_dev_rest_tokens(&dev_files)?;
        config.rest.tokens.extend(tokens);
    }
    let ca = CertificateAuthority::start(&config.ca_settings()?).await?;
    let root_path = config.data_dir.join("root-cert.pem");
    let settings = RaSettings {
        grpc: config.grpc.clone(),
        metrics: config.metrics.clone(),
        auth: config.auth.clone(),
        rest: config.rest.clone(),
        trust: config.trust.clone(),
        rotation: config.rotation.clone(),
        istio: config.istio.clone(),
    };
    let ra = RunningRa::start(&settings, ca.clone(), shutdown_signal()).await?;
    if dev_mode {
        dev::keep_bundle_file(&root_path, ra.trust_bundles.watch()).await?;
    }
    tracing::info!(
        grpc = %ra.grpc_addr,
        metrics = %ra.metrics_addr,
        rest = %ra.rest_addr,
        trust_domain = %config.trust_domain,
        authority = %ca.current_authority().id(),
        store = ca.store().dialect(),
        "meshca server ready"
    );
    if dev_mode {
        println!("meshca dev server");
        println!("  gRPC (Istio CreateCertificate): {}", ra.grpc_addr);
        println!(
            "  metrics / health:               http://{}/metrics",
            ra.metrics_addr
        );
        println!(
            "  admin REST API (HTTPS):         https://{}/v1/authorities",
            ra.rest_addr
        );
        println!(
            "  web console:                    https://{}/ui/ (sign in with a REST token)",
            ra.rest_addr
        );
        println!(
            "  REST tokens (admin, auditor):   {}, {}",
            dev_files.admin_token.display(),
            dev_files.auditor_token.display()
        );
        println!("  trust bundle:                   {}", root_path.display());
        println!(
            "  JWT issuer key (PKCS#8):        {}",
            dev_files.issuer_key.display()
        );
        println!(
            "  JWKS:                           {}",
            dev_files.jwks.display()
        );
        println!(
            "  service-account token:          {}  (default/default, aud istio-ca, 24h)",
            dev_files.token.display()
        );
    }
    ra.run().await?;
    tracing::info!("meshca server stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
