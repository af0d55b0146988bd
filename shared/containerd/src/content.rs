//! containerd's content store: blobs by digest, written through ingests (`content.Write`)
//! that containerd commits only when the bytes match the expected digest and size.

use crate::lease::{LeaseId, leased};
use crate::{Containerd, ContainerdError};
use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ListContentRequest, ReadContentRequest, StatusRequest, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

impl Containerd {
    /// The size and labels of the blob `digest`, if the store has it.
    pub async fn content_info(&self, digest: &str) -> Result<Option<Info>, ContainerdError> {
        match self.content().info(InfoRequest { digest: digest.to_string() }).await {
            Ok(response) => Ok(response.into_inner().info),
            Err(s) => match ContainerdError::call("content info", s) {
                err if err.is_not_found() => Ok(None),
                err => Err(err),
            },
        }
    }

    /// Sets `labels` on the blob `digest` (its other labels stay), under `lease` if given.
    pub async fn set_content_labels(
        &self,
        lease: Option<&LeaseId>,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = Info { digest: digest.to_string(), labels, ..Default::default() };
        let message = UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) };
        let request = match lease {
            Some(lease) => leased(message, lease),
            None => Request::new(message),
        };
        self.content().update(request).await.map_err(|s| ContainerdError::call("labelling content", s))?;
        Ok(())
    }

    /// The whole blob `digest` (for small ones: manifests, configs).
    pub async fn read_content(&self, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let mut stream = self
            .content()
            .read(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 })
            .await
            .map_err(|s| ContainerdError::call("reading content", s))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| ContainerdError::call("reading content", s))?;
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    /// The bytes written so far to the ingest `reference`, if it is open.
    pub async fn ingest_offset(&self, reference: &str) -> Option<i64> {
        self.content()
            .status(StatusRequest { r#ref: reference.to_string() })
            .await
            .ok()
            .and_then(|r| r.into_inner().status)
            .map(|s| s.offset)
    }

    /// Drops the ingest `reference` and the bytes it holds (an absent one is dropped already).
    pub async fn abort_ingest(&self, reference: &str) {
        if let Err(s) = self.content().abort(AbortRequest { r#ref: reference.to_string() }).await {
            let err = ContainerdError::call("aborting a content ingest", s);
            if !err.is_not_found() {
                tracing::warn!(reference, error = %err, "aborting a content ingest failed");
            }
        }
    }

    /// The total size of the blobs in the store, and how many there are.
    pub async fn content_usage(&self) -> Result<(u64, u64), ContainerdError> {
        let mut stream = self
            .content()
            .list(ListContentRequest { filters: vec![] })
            .await
            .map_err(|s| ContainerdError::call("listing content", s))?
            .into_inner();
        let (mut bytes, mut blobs) = (0u64, 0u64);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|s| ContainerdError::call("listing content", s))?;
            for info in batch.info {
                bytes += info.size.max(0) as u64;
                blobs += 1;
            }
        }
        Ok((bytes, blobs))
    }
}

/// How opening an ingest ended.
pub enum Opened {
    /// Write from `offset` (bytes a killed earlier try left are kept).
    Ingest(Box<Ingest>),
    /// The blob is already in the store.
    Exists,
    /// Another writer (a concurrent pull here or in another replica) holds the ingest.
    Locked,
}

/// An open ingest: one `content.Write` stream.
pub struct Ingest {
    sender: mpsc::Sender<WriteContentRequest>,
    responses: Streaming<WriteContentResponse>,
    reference: String,
    total: i64,
    expected: String,
    pub offset: i64,
    /// Writes sent whose answers are not read yet.
    in_flight: usize,
}

/// Writes in flight before waiting for containerd's answers.
const MAX_IN_FLIGHT: usize = 4;

impl Ingest {
    /// Opens the ingest `reference` for a blob of `total` bytes with digest `expected`, under
    /// `lease`.
    pub async fn open(
        containerd: &Containerd,
        lease: &LeaseId,
        reference: &str,
        total: i64,
        expected: &str,
    ) -> Result<Opened, ContainerdError> {
        let (sender, receiver) = mpsc::channel(MAX_IN_FLIGHT + 2);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total,
            expected: expected.to_string(),
            ..Default::default()
        };
        if sender.send(stat).await.is_err() {
            return Err(ContainerdError::call("content write", Status::internal("request stream closed")));
        }
        let request = leased(ReceiverStream::new(receiver), lease);
        let mut responses = match containerd.content().write(request).await {
            Ok(response) => response.into_inner(),
            Err(s) => return classify_open(s),
        };
        let first = match responses.next().await {
            Some(Ok(first)) => first,
            Some(Err(s)) => return classify_open(s),
            None => return Err(ContainerdError::call("content write", Status::unknown("no answer to stat"))),
        };
        Ok(Opened::Ingest(Box::new(Ingest {
            sender,
            responses,
            reference: reference.to_string(),
            total,
            expected: expected.to_string(),
            offset: first.offset,
            in_flight: 0,
        })))
    }

    /// Appends `data` at the current offset.
    pub async fn write(&mut self, data: Vec<u8>) -> Result<(), ContainerdError> {
        let len = data.len() as i64;
        let message = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset,
            data,
            labels: HashMap::new(),
        };
        self.send(message).await?;
        self.offset += len;
        self.in_flight += 1;
        while self.in_flight >= MAX_IN_FLIGHT {
            self.answer().await?;
        }
        Ok(())
    }

    /// Restarts the ingest at byte 0 (the source could not resume).
    pub async fn restart(&mut self) -> Result<(), ContainerdError> {
        self.offset = 0;
        self.write(Vec::new()).await
    }

    /// Commits with `labels`: containerd checks size and digest, and stores nothing on a
    /// mismatch ([`ContainerdError::is_digest_mismatch`] tells which).
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), ContainerdError> {
        let message = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset,
            data: Vec::new(),
            labels,
        };
        self.send(message).await?;
        self.in_flight += 1;
        while self.in_flight > 0 {
            self.answer().await?;
        }
        Ok(())
    }

    async fn send(&mut self, message: WriteContentRequest) -> Result<(), ContainerdError> {
        if self.sender.send(message).await.is_err() {
            // The stream ended: containerd's answer says why.
            return match self.responses.next().await {
                Some(Err(s)) => Err(ContainerdError::call("content write", s)),
                _ => Err(ContainerdError::call("content write", Status::unknown("write stream closed"))),
            };
        }
        Ok(())
    }

    async fn answer(&mut self) -> Result<(), ContainerdError> {
        match self.responses.next().await {
            Some(Ok(_)) => {
                self.in_flight -= 1;
                Ok(())
            }
            Some(Err(s)) => match ContainerdError::call("content write", s) {
                // Committed by another writer meanwhile: the blob is there.
                err if err.is_already_exists() => {
                    self.in_flight = 0;
                    Ok(())
                }
                err => Err(err),
            },
            None => Err(ContainerdError::call("content write", Status::unknown("write stream ended early"))),
        }
    }
}

fn classify_open(status: Status) -> Result<Opened, ContainerdError> {
    let err = ContainerdError::call("opening a content ingest", status);
    if err.is_already_exists() {
        Ok(Opened::Exists)
    } else if err.is_locked() {
        Ok(Opened::Locked)
    } else {
        Err(err)
    }
}
