//! A blocking CRI client over containerd's unix socket: what a kubelet sends, one call at a
//! time, each with a time limit so that a stuck runtime fails the test instead of hanging it.

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

pub use k8s_cri::v1 as api;

/// Long enough for a sandbox set up by the slowest chain on a loaded machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the runtime service at `socket`.
    pub fn connect(socket: &Path) -> Result<Cri, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path: PathBuf = socket.to_path_buf();
        // The URI is required by the API and ignored: every connection goes to the socket.
        let channel = rt
            .block_on(async {
                Endpoint::try_from("http://[::]:50051")
                    .map_err(|e| e.to_string())?
                    .connect_with_connector(service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    }))
                    .await
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Runs one call; a call that outlives [`CALL_TIMEOUT`] is a `DeadlineExceeded` status.
    pub fn call<T, F, Fut>(&self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {CALL_TIMEOUT:?}"
                ))),
            }
        })
    }

    pub fn version(&self) -> Result<api::VersionResponse, tonic::Status> {
        self.call(|mut c| async move {
            c.version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    pub fn status(&self) -> Result<api::StatusResponse, tonic::Status> {
        self.call(|mut c| async move { c.status(api::StatusRequest { verbose: false }).await })
    }

    /// The status of the named runtime condition (`RuntimeReady`, `NetworkReady`) with its
    /// reason and message.
    pub fn condition(&self, kind: &str) -> Result<(bool, String), tonic::Status> {
        let st = self.status()?;
        let cond = st
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .find(|c| c.r#type == kind);
        Ok(match cond {
            Some(c) => (c.status, format!("{}: {}", c.reason, c.message)),
            None => (false, format!("no {kind} condition")),
        })
    }

    pub fn run_pod_sandbox(&self, config: &api::PodSandboxConfig) -> Result<String, tonic::Status> {
        let config = config.clone();
        self.call(|mut c| async move {
            c.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })
        .map(|r| r.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<api::PodSandboxStatusResponse, tonic::Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    pub fn list_pod_sandbox(&self) -> Result<Vec<api::PodSandbox>, tonic::Status> {
        self.call(|mut c| async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items)
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        self.call(|mut c| async move { c.create_container(req).await })
            .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.start_container(api::StartContainerRequest { container_id: id })
                .await
        })
        .map(drop)
    }

    /// Stops a container, killing it after `timeout` seconds (0: at once).
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.stop_container(api::StopContainerRequest {
                container_id: id,
                timeout,
            })
            .await
        })
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let id = id.to_string();
        self.call(|mut c| async move {
            c.remove_container(api::RemoveContainerRequest { container_id: id })
                .await
        })
        .map(drop)
    }

    /// Runs `cmd` in a container, as `kubectl exec` does without a terminal; at most
    /// `timeout` seconds.
    pub fn exec_sync(
        &self,
        container: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<api::ExecSyncResponse, tonic::Status> {
        let req = api::ExecSyncRequest {
            container_id: container.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.call(|mut c| async move { c.exec_sync(req).await })
    }
}
