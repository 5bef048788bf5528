//! `meshca ca`: the standalone signing service for keyless `meshca server` replicas, with its
//! health and metrics port, until SIGINT/SIGTERM.

use meshca_ca::service::RunningSigningService;
use meshca_ca::CertificateAuthority;

use crate::config::MeshcaConfig;
use crate::server::shutdown_signal;

pub async fn run(config: MeshcaConfig) -> anyhow::Result<()> {
    if config.ca.remote_addr.is_some() {
        anyhow::bail!(
            "ca.remote_addr is set: that makes `meshca server` a keyless RA; `meshca ca` is the \
             service it points at and holds the keys itself"
        );
    }
    let ca = CertificateAuthority::start(&config.ca_settings()?).await?;
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut service_stop = stop_tx.subscribe();
    let mut http_stop = stop_tx.subscribe();
    let service = RunningSigningService::start(
        ca.clone(),
        &config.ca,
        config.grpc.serving_cert_ttl,
        config.rotation.settle,
        async move {
            let _ = service_stop.recv().await;
        },
    )
    .await?;
    let (metrics_addr, http) =
        meshca_ra::server::start_ca_observability(config.metrics.listen, ca.clone(), async move {
            let _ = http_stop.recv().await;
        })
        .await?;
    tracing::info!(
        service = %service.addr,
        metrics = %metrics_addr,
        trust_domain = %config.trust_domain,
        authority = %ca.current_authority().id(),
        store = ca.store().dialect(),
        allowed_ras = ?config.ca.allowed_ras,
        "meshca ca ready"
    );
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    let (service, http) = tokio::join!(service.run(), http);
    service?;
    http?;
    tracing::info!("meshca ca stopped");
    Ok(())
}
