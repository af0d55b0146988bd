//! The `runtime.v1.RuntimeService` server: each RPC hands off to the module of its concern.
//! Exec, Attach and PortForward are the streaming server's; the proxy never routes them here.
//! Every RPC not built here answers `UNIMPLEMENTED` through the generated default methods.

use crate::container::{metrics as container_metrics, stats as container_stats, update as container_update};
use crate::{container, events, logs, pod_cidr, sandbox, status, version};
use crisp_config::Config;
use crisp_containerd::Containerd;
use crisp_proto::cri::runtime_service_server::RuntimeService;
use crisp_proto::cri::*;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

pub struct Runtime {
    containerd: Containerd,
    config: Config,
    reservations: sandbox::Reservations,
    cpu_samples: sandbox::CpuSamples,
    containers: container::Containers,
    /// What the container stats keep between calls (CPU samples apart from the pods').
    container_samples: container_stats::Samples,
    sandbox_image: sandbox::SandboxImage,
}

impl Runtime {
    pub fn new(containerd: Containerd, config: Config) -> Self {
        let containers = container::Containers::new(
            containerd.clone(),
            std::sync::Arc::new(config.clone()),
            events::Hub::default(),
            // Detected once (it runs `runc features`), before the service serves.
            container::spec::HostFeatures::node().clone(),
        );
        Self {
            containers,
            containerd,
            config,
            reservations: sandbox::Reservations::default(),
            cpu_samples: sandbox::CpuSamples::default(),
            container_samples: container_stats::Samples::default(),
            sandbox_image: sandbox::SandboxImage::default(),
        }
    }
}

impl Runtime {
    pub fn containers(&self) -> &container::Containers {
        &self.containers
    }
}

fn status_of(err: sandbox::SandboxError) -> Status {
    crisp_errors::to_status(&err)
}

fn container_status(err: container::ContainerError) -> Status {
    crisp_errors::to_status(&err)
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(&self, _request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(version::version()))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let verbose = request.into_inner().verbose;
        Ok(Response::new(status::status(&self.containerd, &self.config, verbose).await))
    }

    async fn runtime_config(
        &self,
        _request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        // crisp manages cgroups with cgroupfs; SYSTEMD is the protobuf default, so say it.
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration { cgroup_driver: CgroupDriver::Cgroupfs as i32 }),
        }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let cidr = request.into_inner().runtime_config.and_then(|c| c.network_config).unwrap_or_default().pod_cidr;
        pod_cidr::update(&self.config.runtime.root_dir, &cidr).await.map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let id =
            sandbox::run(&self.containerd, &self.config, &self.reservations, &self.sandbox_image, request.into_inner())
                .await
                .map_err(status_of)?;
        self.containers.publish_pod(&id, ContainerEventType::ContainerCreatedEvent).await;
        self.containers.publish_pod(&id, ContainerEventType::ContainerStartedEvent).await;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let pod = container::stop_pod_containers(&self.containers, &id).await.map_err(container_status)?;
        sandbox::stop(&self.containerd, &self.config, &id).await.map_err(status_of)?;
        if let Some(pod) = pod {
            self.containers.publish_pod(&pod, ContainerEventType::ContainerStoppedEvent).await;
        }
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let pod = container::remove_pod_containers(&self.containers, &id).await.map_err(container_status)?;
        sandbox::remove(&self.containerd, &self.config, &id).await.map_err(status_of)?;
        if let Some(pod) = pod {
            self.containers.publish_pod(&pod, ContainerEventType::ContainerDeletedEvent).await;
        }
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let response =
            sandbox::status(&self.containerd, &request.pod_sandbox_id, request.verbose).await.map_err(status_of)?;
        Ok(Response::new(response))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let items = sandbox::list(&self.containerd, request.into_inner().filter).await.map_err(status_of)?;
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        sandbox::update_resources(&self.containerd, request.into_inner()).await.map_err(status_of)?;
        Ok(Response::new(UpdatePodSandboxResourcesResponse {}))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let stats = sandbox::stats(&self.containerd, &self.cpu_samples, &id).await.map_err(status_of)?;
        let mut stats = [stats];
        container_stats::add_to_pods(&self.containerd, &self.container_samples, &mut stats)
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        let [stats] = stats;
        Ok(Response::new(PodSandboxStatsResponse { stats: Some(stats) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        let mut stats = sandbox::list_stats(&self.containerd, &self.cpu_samples, request.into_inner().filter)
            .await
            .map_err(status_of)?;
        container_stats::add_to_pods(&self.containerd, &self.container_samples, &mut stats)
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let container_id = container::create(&self.containers, request.into_inner()).await.map_err(container_status)?;
        Ok(Response::new(CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        container::start(&self.containers, &id).await.map_err(container_status)?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let request = request.into_inner();
        container::stop(&self.containers, &request.container_id, request.timeout).await.map_err(container_status)?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        container::remove(&self.containers, &id).await.map_err(container_status)?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let response = container::status(&self.containers, &request.container_id, request.verbose)
            .await
            .map_err(container_status)?;
        Ok(Response::new(response))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let containers =
            container::list(&self.containers, request.into_inner().filter).await.map_err(container_status)?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn checkpoint_container(
        &self,
        request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        container::checkpoint(&self.containers, &id).await.map_err(container_status)?;
        Ok(Response::new(CheckpointContainerResponse {}))
    }

    async fn get_container_events(
        &self,
        _request: Request<GetEventsRequest>,
    ) -> Result<Response<BoxStream<ContainerEventResponse>>, Status> {
        Ok(Response::new(self.containers.hub.subscribe()))
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Result<Response<ExecSyncResponse>, Status> {
        let response = container::exec_sync::exec_sync(&self.containerd, &self.config, request.into_inner())
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(response))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        logs::reopen::reopen(&self.containerd, self.containers.log_writers(), &id)
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let stats = container_stats::stats(&self.containerd, &self.container_samples, &id)
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        let stats = container_stats::list(&self.containerd, &self.container_samples, request.into_inner().filter)
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        container_update::update(&self.containers, request.into_inner())
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(ListMetricDescriptorsResponse { descriptors: container_metrics::descriptors() }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = container_metrics::list(&self.containerd, &self.cpu_samples)
            .await
            .map_err(|e| crisp_errors::to_status(&e))?;
        Ok(Response::new(ListPodSandboxMetricsResponse { pod_metrics }))
    }
}
