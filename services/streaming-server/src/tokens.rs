//! The URLs' tokens: random (128 bits), single use, expiring after `token_ttl`, at most
//! `max_tokens` in flight. A token maps to the request it was issued for; using it removes it.

use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What a URL was issued for.
#[derive(Debug, Clone)]
pub enum Issued {
    Exec(crisp_proto::cri::ExecRequest),
    Attach(crisp_proto::cri::AttachRequest),
    PortForward(crisp_proto::cri::PortForwardRequest),
}

impl Issued {
    /// The URL path segment of this kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Issued::Exec(_) => "exec",
            Issued::Attach(_) => "attach",
            Issued::PortForward(_) => "portforward",
        }
    }
}

pub struct Tokens {
    ttl: Duration,
    max: usize,
    issued: Mutex<HashMap<String, (Instant, Issued)>>,
}

/// No room for another token.
#[derive(Debug)]
pub struct Full(pub usize);

impl Tokens {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { ttl, max, issued: Mutex::new(HashMap::new()) }
    }

    fn issued(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Issued)>> {
        self.issued.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh token for `request`.
    pub fn issue(&self, request: Issued) -> Result<String, Full> {
        let now = Instant::now();
        let mut issued = self.issued();
        if issued.len() >= self.max {
            issued.retain(|_, (expires, _)| *expires > now);
            if issued.len() >= self.max {
                return Err(Full(self.max));
            }
        }
        loop {
            let mut bytes = [0u8; 16];
            // The kernel's random source; failing it is not something a server can go on from.
            if getrandom::fill(&mut bytes).is_err() {
                return Err(Full(issued.len()));
            }
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if !issued.contains_key(&token) {
                issued.insert(token.clone(), (now + self.ttl, request));
                return Ok(token);
            }
        }
    }

    /// The request of `token` if it was issued for `kind` and has not expired; used up either way.
    pub fn consume(&self, kind: &str, token: &str) -> Option<Issued> {
        let (expires, request) = self.issued().remove(token)?;
        (expires > Instant::now() && request.kind() == kind).then_some(request)
    }

    pub fn in_flight(&self) -> usize {
        self.issued().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crisp_proto::cri::PortForwardRequest;

    fn pf() -> Issued {
        Issued::PortForward(PortForwardRequest { pod_sandbox_id: "p".into(), port: vec![] })
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_works_once_and_not_after_it_expires() {
        let tokens = Tokens::new(Duration::from_secs(60), 10);
        let a = tokens.issue(pf()).unwrap();
        let b = tokens.issue(pf()).unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 22);
        assert!(tokens.consume("portforward", &a).is_some());
        assert!(tokens.consume("portforward", &a).is_none(), "single use");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(tokens.consume("portforward", &b).is_none(), "expired");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_for_one_kind_does_not_open_another() {
        let tokens = Tokens::new(Duration::from_secs(60), 10);
        let a = tokens.issue(pf()).unwrap();
        assert!(tokens.consume("exec", &a).is_none());
        assert!(tokens.consume("portforward", &a).is_none(), "used up by the wrong try");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_in_flight_are_bounded_and_expired_ones_make_room() {
        let tokens = Tokens::new(Duration::from_secs(60), 2);
        tokens.issue(pf()).unwrap();
        tokens.issue(pf()).unwrap();
        assert!(tokens.issue(pf()).is_err());
        tokio::time::advance(Duration::from_secs(61)).await;
        tokens.issue(pf()).unwrap();
        assert_eq!(tokens.in_flight(), 1);
    }
}
