//! A small **contract server** for Azure Key Vault: not Azure, and not an emulator of all of
//! it. It speaks the slice of the Key Vault keys REST API (version 2025-07-01, the version
//! `azure_security_keyvault_keys` 1.0 sends) that byok uses, over HTTPS on 127.0.0.1, with
//! real RSA key material (real RSA-OAEP / RSA-OAEP-256) and real key state, plus the Entra ID
//! token endpoint for the client-secret credential. The client under test is Microsoft's SDK
//! over byok's transport, talking TLS to it.
//!
//! Shapes follow the public REST reference and its published examples:
//! - keys: <https://learn.microsoft.com/rest/api/keyvault/keys/create-key/create-key>,
//!   `get-key`, `get-key-versions`, `update-key`, `import-key`, `delete-key`,
//!   `get-deleted-key`, `recover-deleted-key`, `purge-deleted-key`, `wrap-key`, `unwrap-key`
//!   (all under <https://learn.microsoft.com/rest/api/keyvault/keys/>): a key bundle is
//!   `{"key": JsonWebKey, "attributes": {"enabled", "created", "updated", "recoveryLevel",
//!   "recoverableDays"}}`, times in Unix seconds, binary fields base64url without padding;
//!   wrap/unwrap answer `{"kid", "value"}`; lists are `{"value": [...], "nextLink"}`;
//! - errors: `{"error": {"code", "message", "innererror": {"code"}}}` (`KeyVaultError`), with
//!   the codes of <https://learn.microsoft.com/azure/key-vault/general/rest-error-codes>;
//! - authentication: a request without a token gets `401` with
//!   `WWW-Authenticate: Bearer authorization="…", resource="…"`
//!   (<https://learn.microsoft.com/azure/key-vault/general/authentication-requests-and-responses>),
//!   the SDK then asks its credential for `{resource}/.default` and retries;
//! - Entra ID: `POST /{tenant}/oauth2/v2.0/token` with the `client_credentials` grant
//!   (<https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow>).
//!
//! What it does not do: ARM (vault creation, access policies, RBAC — the test sets access
//! directly in [`State`], as a role assignment would), Managed HSM, key rotation policies,
//! backup/restore, attestation, release, sign/verify/encrypt/decrypt, tags, real token
//! signatures (tokens are opaque random strings), throttling by itself (tests inject 429s).

// Test support shared by tests/azure.rs and benches/azure.rs (each uses part of it); answers
// are passed by value as errors on purpose (one HTTP response per request, never hot).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::result_large_err,
    clippy::large_enum_variant
)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Oaep};
use serde_json::{Value, json};

/// The vault's host name (RFC 6761 `.test`: never resolves; the provider is pinned to
/// 127.0.0.1 with `AzureKeyVaultConfig::resolve`).
pub const VAULT_HOST: &str = "contract.vault.byok.test";
/// The Entra ID authority host.
pub const LOGIN_HOST: &str = "login.byok.test";
/// The challenge resource: the SDK checks that the vault host is below it.
pub const RESOURCE: &str = "https://vault.byok.test";
/// The directory (tenant) ID.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// The only API version this server speaks.
pub const API_VERSION: &str = "2025-07-01";
/// The vault owner's client ID (every key permission).
pub const OWNER: &str = "vault-owner";
/// Versions per page of `GET /keys/{name}/versions` (small, so paging is exercised).
pub const PAGE: usize = 1;

/// The federated token (the AKS-projected service account token) the token endpoint accepts as
/// `client_assertion` for `client_id` (workload identity).
pub fn federated_token_of(client_id: &str) -> String {
    format!("federated-token-of-{client_id}")
}

/// The `X-IDENTITY-HEADER` value the managed identity endpoint expects (App Service's
/// `IDENTITY_HEADER`).
pub const MSI_SECRET: &str = "contract-identity-header";
/// The principal a system-assigned managed identity token stands for.
pub const SYSTEM_ASSIGNED: &str = "system-assigned-identity";

/// The client secret the token endpoint accepts for `client_id`.
pub fn secret_of(client_id: &str) -> String {
    format!("secret-of-{client_id}")
}

/// Key permissions of an identity (an access policy / role assignment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms {
    pub get: bool,
    pub wrap: bool,
    pub unwrap: bool,
}

enum Material {
    Rsa(rsa::PrivateKey),
    /// A real P-256 public key (ring), held only to be refused for RSA wrapping.
    Ec {
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

struct Version {
    id: String,
    material: Arc<Material>,
    enabled: bool,
    created: u64,
    updated: u64,
}

struct Entry {
    versions: Vec<Version>,
    deleted: Option<u64>,
}

/// An answer the next vault request gets instead of being served (429, 5xx, a delay).
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

/// Everything the server holds; tests change access and faults directly.
#[derive(Default)]
pub struct State {
    keys: BTreeMap<String, Entry>,
    /// Access table: client ID → key permissions.
    pub access: HashMap<String, Perms>,
    /// Client IDs the token endpoint refuses (a deleted app registration / broken secret).
    pub disabled_apps: HashSet<String>,
    tokens: HashMap<String, String>,
    /// Answers served to the next vault requests, in order.
    pub faults: VecDeque<Fault>,
    /// Purge protection (recovery level `Recoverable` instead of `Recoverable+Purgeable`).
    pub purge_protection: bool,
    /// Vault requests served (after authentication), for tests that count calls.
    pub served: usize,
}

/// A running server; stopped when dropped.
pub struct ContractServer {
    pub addr: SocketAddr,
    /// The managed identity endpoint (App Service's `IDENTITY_ENDPOINT`, plain HTTP on
    /// loopback as on App Service).
    pub msi_endpoint: String,
    pub vault_url: String,
    pub authority: String,
    pub ca_pem: String,
    pub state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ContractServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn b64(b: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(b)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    Base64UrlUnpadded::decode_vec(s.trim_end_matches('=')).ok()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("getrandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ContractServer {
    /// Starts a server on a free port of 127.0.0.1 in its own thread and runtime (so it
    /// outlives any one test's runtime), with a fresh test CA.
    pub fn start() -> ContractServer {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "byok Key Vault contract test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let ca_pem = ca_cert.pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params =
            rcgen::CertificateParams::new(vec![VAULT_HOST.to_owned(), LOGIN_HOST.to_owned()])
                .expect("leaf");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let certs = vec![leaf.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der())
            .expect("leaf key der");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let msi = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        msi.set_nonblocking(true).expect("nonblocking");
        let msi_addr = msi.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        state.lock().expect("state").access.insert(
            OWNER.to_owned(),
            Perms {
                get: true,
                wrap: true,
                unwrap: true,
            },
        );
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&state);
        let port = addr.port();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let msi = tokio::net::TcpListener::from_std(msi).expect("listener");
                let msi_state = Arc::clone(&st);
                let msi_task = tokio::spawn(async move {
                    while let Ok((tcp, _)) = msi.accept().await {
                        let st = Arc::clone(&msi_state);
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let st = Arc::clone(&st);
                                async move {
                                    Ok::<_, std::convert::Infallible>(managed_identity(&st, req))
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                .await;
                        });
                    }
                });
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        r = listener.accept() => {
                            let Ok((tcp, _)) = r else { continue };
                            let acceptor = acceptor.clone();
                            let st = Arc::clone(&st);
                            tokio::spawn(async move {
                                let Ok(tls) = acceptor.accept(tcp).await else { return };
                                let svc = hyper::service::service_fn(move |req| {
                                    let st = Arc::clone(&st);
                                    async move { Ok::<_, std::convert::Infallible>(serve(st, port, req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                                    .await;
                            });
                        }
                    }
                }
                msi_task.abort();
            });
        });
        ContractServer {
            addr,
            msi_endpoint: format!("http://{msi_addr}/msi/token"),
            vault_url: format!("https://{VAULT_HOST}:{port}"),
            authority: format!("https://{LOGIN_HOST}:{port}"),
            ca_pem,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Locks the state.
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state")
    }

    /// Grants (or with `Perms::default()` removes) `client_id`'s key permissions.
    pub fn set_access(&self, client_id: &str, p: Option<Perms>) {
        let mut s = self.state();
        match p {
            Some(p) => {
                s.access.insert(client_id.to_owned(), p);
            }
            None => {
                s.access.remove(client_id);
            }
        }
    }

    /// Queues `n` copies of a fault for the next vault requests.
    pub fn fail_next(&self, n: usize, status: u16, headers: &[(&str, &str)], body: &str) {
        let mut s = self.state();
        for _ in 0..n {
            s.faults.push_back(Fault {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                body: body.to_owned(),
                delay: Duration::ZERO,
            });
        }
    }

    /// Queues one fault that answers 200-less after `delay` (a hung vault).
    pub fn stall_next(&self, n: usize, delay: Duration) {
        let mut s = self.state();
        for _ in 0..n {
            s.faults.push_back(Fault {
                status: 503,
                headers: Vec::new(),
                body: String::new(),
                delay,
            });
        }
    }

    /// The principals tokens were issued to (client secret or managed identity).
    pub fn token_holders(&self) -> HashSet<String> {
        self.state().tokens.values().cloned().collect()
    }

    /// Vault requests served so far.
    pub fn served(&self) -> usize {
        self.state().served
    }
}

/// A process-wide server shared by the tests of one test binary (stopped when the process
/// ends).
pub fn shared() -> Arc<ContractServer> {
    static S: OnceLock<Arc<ContractServer>> = OnceLock::new();
    Arc::clone(S.get_or_init(|| Arc::new(ContractServer::start())))
}

type Answer = Response<Full<Bytes>>;

fn answer(status: u16, headers: &[(String, String)], body: Vec<u8>) -> Answer {
    let mut r = Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK));
    for (k, v) in headers {
        r = r.header(k.as_str(), v.as_str());
    }
    if !body.is_empty() {
        r = r.header("content-type", "application/json; charset=utf-8");
    }
    r.body(Full::new(Bytes::from(body))).expect("response")
}

fn json_answer(status: u16, v: Value) -> Answer {
    answer(status, &[], serde_json::to_vec(&v).expect("json"))
}

/// A `KeyVaultError` body.
fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Answer {
    let mut e = json!({ "code": code, "message": message });
    if let Some(i) = inner {
        e["innererror"] = json!({ "code": i });
    }
    json_answer(status, json!({ "error": e }))
}

fn not_found(name: &str) -> Answer {
    kv_error(
        404,
        "KeyNotFound",
        &format!(
            "A key with (name/id) {name} was not found in this key vault. If you recently \
             deleted this key you may be able to recover it using the correct recovery command. \
             For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
        None,
    )
}

fn bad_parameter(message: &str) -> Answer {
    kv_error(400, "BadParameter", message, None)
}

fn forbidden(client: &str, perm: &str) -> Answer {
    kv_error(
        403,
        "Forbidden",
        &format!(
            "The user, group or application 'appid={client};iss=https://sts.windows.net/{TENANT}/' \
             does not have keys {perm} permission on key vault 'contract;location=westeurope'. \
             For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
        ),
        Some("AccessDenied"),
    )
}

impl State {
    fn recovery_level(&self) -> &'static str {
        if self.purge_protection {
            "Recoverable"
        } else {
            "Recoverable+Purgeable"
        }
    }

    fn attributes(&self, v: &Version) -> Value {
        json!({
            "enabled": v.enabled,
            "created": v.created,
            "updated": v.updated,
            "recoveryLevel": self.recovery_level(),
            "recoverableDays": 90,
        })
    }

    fn bundle(&self, base: &str, name: &str, v: &Version) -> Value {
        let kid = format!("{base}/keys/{name}/{}", v.id);
        let key = match &*v.material {
            Material::Rsa(k) => json!({
                "kid": kid,
                "kty": "RSA",
                "key_ops": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
                "n": b64(&k.n().as_ref().to_be_bytes_trimmed_vartime()),
                "e": b64(&k.e().to_be_bytes_trimmed_vartime()),
            }),
            Material::Ec { x, y } => json!({
                "kid": kid,
                "kty": "EC",
                "key_ops": ["sign", "verify"],
                "crv": "P-256",
                "x": b64(x),
                "y": b64(y),
            }),
        };
        json!({ "key": key, "attributes": self.attributes(v) })
    }

    fn deleted_bundle(&self, base: &str, name: &str, e: &Entry) -> Value {
        let cur = e.versions.last().expect("a key has a version");
        let mut b = self.bundle(base, name, cur);
        let deleted = e.deleted.unwrap_or_else(now);
        b["recoveryId"] = json!(format!("{base}/deletedkeys/{name}"));
        b["deletedDate"] = json!(deleted);
        b["scheduledPurgeDate"] = json!(deleted + 90 * 86_400);
        b
    }
}

fn generate(kty: &str, size: Option<u64>, crv: Option<&str>) -> Result<Material, Answer> {
    match kty {
        "RSA" | "RSA-HSM" => {
            let bits = size.unwrap_or(2048);
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(bad_parameter(&format!(
                    "The specified key size {bits} is not supported. Supported sizes: 2048, 3072, 4096."
                )));
            }
            let k =
                rsa::PrivateKey::new(&mut rand_core::UnwrapErr(getrandom::SysRng), bits as usize)
                    .map_err(|_| bad_parameter("key generation failed"))?;
            Ok(Material::Rsa(k))
        }
        "EC" | "EC-HSM" => {
            if crv.unwrap_or("P-256") != "P-256" {
                return Err(bad_parameter(
                    "Only P-256 is supported by this contract server.",
                ));
            }
            let rng = ring::rand::SystemRandom::new();
            let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
                .map_err(|_| bad_parameter("EC key generation failed"))?;
            let kp = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
                .map_err(|_| bad_parameter("EC key generation failed"))?;
            use ring::signature::KeyPair as _;
            let pt = kp.public_key().as_ref(); // 0x04 || x || y
            Ok(Material::Ec {
                x: pt[1..33].to_vec(),
                y: pt[33..65].to_vec(),
            })
        }
        other => Err(bad_parameter(&format!(
            "The specified key type {other:?} is not valid for this vault."
        ))),
    }
}

fn import(jwk: &Value) -> Result<Material, Answer> {
    let part = |n: &str| {
        jwk.get(n)
            .and_then(Value::as_str)
            .and_then(unb64)
            .ok_or_else(|| bad_parameter(&format!("JWK is missing {n}")))
    };
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA" | "RSA-HSM") => {
            let u = |b: Vec<u8>| BoxedUint::from_be_slice_vartime(&b);
            let k = rsa::PrivateKey::from_components(
                u(part("n")?),
                u(part("e")?),
                u(part("d")?),
                vec![u(part("p")?), u(part("q")?)],
            )
            .map_err(|_| bad_parameter("The JWK is not a valid RSA private key."))?;
            Ok(Material::Rsa(k))
        }
        _ => Err(bad_parameter("Only RSA keys can be imported here.")),
    }
}

async fn serve(st: Arc<Mutex<State>>, port: u16, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return bad_parameter("unreadable body"),
    };

    if path.ends_with("/oauth2/v2.0/token") {
        return token(&st, &path, &body);
    }

    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if params.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return bad_parameter(&format!(
            "The specified version ({}) is not recognized. Consider using the latest supported version ({API_VERSION}).",
            params.get("api-version").map(String::as_str).unwrap_or("")
        ));
    }
    let challenge = format!(
        "Bearer authorization=\"https://{LOGIN_HOST}:{port}/{TENANT}\", resource=\"{RESOURCE}\""
    );
    let client = {
        let s = st.lock().expect("state");
        auth.as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| s.tokens.get(t).cloned())
    };
    let Some(client) = client else {
        let msg = if auth.is_none() {
            "AKV10000: Request is missing a Bearer or PoP token."
        } else {
            "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/…"
        };
        let mut a = kv_error(401, "Unauthorized", msg, None);
        a.headers_mut().insert(
            "www-authenticate",
            challenge.parse().expect("challenge header"),
        );
        return a;
    };
    let fault = {
        let mut s = st.lock().expect("state");
        s.served += 1;
        s.faults.pop_front()
    };
    if let Some(f) = fault {
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        return answer(f.status, &f.headers, f.body.into_bytes());
    }
    let base = format!("https://{VAULT_HOST}:{port}");
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return bad_parameter("The request body is not valid JSON."),
        }
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut s = st.lock().expect("state");
    vault(&mut s, &base, &client, &method, &segs, &params, &body)
}

fn token(st: &Arc<Mutex<State>>, path: &str, body: &[u8]) -> Answer {
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let tenant = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let client = form.get("client_id").cloned().unwrap_or_default();
    let mut s = st.lock().expect("state");
    // A client secret, or a federated client assertion (workload identity:
    // <https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow#third-case-access-token-request-with-a-federated-credential>).
    let secret_ok = form.get("client_secret") == Some(&secret_of(&client));
    let assertion_ok = form.get("client_assertion_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        && form.get("client_assertion") == Some(&federated_token_of(&client));
    let ok = tenant == TENANT
        && form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && (secret_ok || assertion_ok)
        && form.get("scope").map(String::as_str) == Some(&format!("{RESOURCE}/.default"))
        && !s.disabled_apps.contains(&client);
    if !ok {
        return json_answer(
            401,
            json!({
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
                "error_codes": [7000215],
                "timestamp": "2026-01-01 00:00:00Z",
                "trace_id": "00000000-0000-0000-0000-000000000000",
                "correlation_id": "00000000-0000-0000-0000-000000000000"
            }),
        );
    }
    let t = random_hex(24);
    s.tokens.insert(t.clone(), client);
    json_answer(
        200,
        json!({ "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": t }),
    )
}

/// The App Service managed identity endpoint (`GET {IDENTITY_ENDPOINT}?api-version=2019-08-01
/// &resource=…[&client_id=…]` with `X-IDENTITY-HEADER`;
/// <https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference>):
/// a token for the user-assigned identity named by `client_id`, or for [`SYSTEM_ASSIGNED`].
fn managed_identity(st: &Arc<Mutex<State>>, req: Request<Incoming>) -> Answer {
    let q: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let header_ok = req
        .headers()
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        == Some(MSI_SECRET);
    if req.uri().path() != "/msi/token"
        || !header_ok
        || q.get("api-version").map(String::as_str) != Some("2019-08-01")
        || q.get("resource").map(String::as_str) != Some(RESOURCE)
    {
        return json_answer(
            400,
            json!({ "statusCode": 400, "message": "Unable to load the proper Managed Identity." }),
        );
    }
    let principal = q
        .get("client_id")
        .cloned()
        .unwrap_or_else(|| SYSTEM_ASSIGNED.to_owned());
    let t = random_hex(24);
    st.lock()
        .expect("state")
        .tokens
        .insert(t.clone(), principal.clone());
    json_answer(
        200,
        json!({
            "access_token": t,
            "expires_on": (now() + 3600).to_string(),
            "resource": RESOURCE,
            "token_type": "Bearer",
            "client_id": principal,
        }),
    )
}

/// The key-permission check of one operation.
fn allowed(s: &State, client: &str, perm: &str) -> bool {
    if client == OWNER {
        return true;
    }
    let p = s.access.get(client).copied().unwrap_or_default();
    match perm {
        "get" => p.get,
        "wrapKey" => p.wrap,
        "unwrapKey" => p.unwrap,
        _ => false,
    }
}

fn vault(
    s: &mut State,
    base: &str,
    client: &str,
    method: &hyper::Method,
    segs: &[&str],
    params: &HashMap<String, String>,
    body: &Value,
) -> Answer {
    use hyper::Method as M;
    let need = |s: &State, perm: &str| (!allowed(s, client, perm)).then(|| forbidden(client, perm));
    match (method, segs) {
        (&M::POST, ["keys", name, "create"]) => {
            if let Some(f) = need(s, "create") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            if s.keys.get(&name).is_some_and(|e| e.deleted.is_some()) {
                return kv_error(
                    409,
                    "Conflict",
                    &format!(
                        "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."
                    ),
                    Some("ObjectIsDeletedButRecoverable"),
                );
            }
            let kty = body.get("kty").and_then(Value::as_str).unwrap_or("");
            let m = match generate(
                kty,
                body.get("key_size").and_then(Value::as_u64),
                body.get("crv").and_then(Value::as_str),
            ) {
                Ok(m) => m,
                Err(a) => return a,
            };
            add_version(s, base, &name, m)
        }
        (&M::PUT, ["keys", name]) => {
            if let Some(f) = need(s, "import") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            if s.keys.get(&name).is_some_and(|e| e.deleted.is_some()) {
                return kv_error(
                    409,
                    "Conflict",
                    "deleted but recoverable",
                    Some("ObjectIsDeletedButRecoverable"),
                );
            }
            let m = match body.get("key").map(import) {
                Some(Ok(m)) => m,
                Some(Err(a)) => return a,
                None => return bad_parameter("The request has no key."),
            };
            add_version(s, base, &name, m)
        }
        (&M::GET, ["keys", name, "versions"]) => {
            if let Some(f) = need(s, "get") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            let Some(e) = s.keys.get(&name).filter(|e| e.deleted.is_none()) else {
                return not_found(&name);
            };
            let skip: usize = params
                .get("$skiptoken")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let items: Vec<Value> = e
                .versions
                .iter()
                .skip(skip)
                .take(PAGE)
                .map(|v| json!({ "kid": format!("{base}/keys/{name}/{}", v.id), "attributes": s.attributes(v) }))
                .collect();
            let next = (skip + PAGE < e.versions.len()).then(|| {
                format!(
                    "{base}/keys/{name}/versions?api-version={API_VERSION}&$skiptoken={}",
                    skip + PAGE
                )
            });
            json_answer(200, json!({ "value": items, "nextLink": next }))
        }
        (&M::GET, ["keys", name]) | (&M::GET, ["keys", name, _]) => {
            if let Some(f) = need(s, "get") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            let version = segs.get(2).copied();
            match find(s, &name, version) {
                Ok(v) => json_answer(200, s.bundle(base, &name, v)),
                Err(a) => a,
            }
        }
        (&M::PATCH, ["keys", name]) | (&M::PATCH, ["keys", name, _]) => {
            if let Some(f) = need(s, "update") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            let version = segs.get(2).map(|v| (*v).to_owned());
            let enabled = body.pointer("/attributes/enabled").and_then(Value::as_bool);
            let Some(e) = s.keys.get_mut(&name).filter(|e| e.deleted.is_none()) else {
                return not_found(&name);
            };
            let v = match &version {
                Some(id) => e.versions.iter_mut().find(|v| v.id == *id),
                None => e.versions.last_mut(),
            };
            let Some(v) = v else {
                return not_found(&format!("{name}/{}", version.unwrap_or_default()));
            };
            if let Some(en) = enabled {
                v.enabled = en;
            }
            v.updated = now();
            let id = v.id.clone();
            match find(s, &name, Some(&id)) {
                Ok(v) => json_answer(200, s.bundle(base, &name, v)),
                Err(a) => a,
            }
        }
        (&M::DELETE, ["keys", name]) => {
            if let Some(f) = need(s, "delete") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            match s.keys.get_mut(&name).filter(|e| e.deleted.is_none()) {
                Some(e) => {
                    e.deleted = Some(now());
                    let e = &s.keys[&name];
                    json_answer(200, s.deleted_bundle(base, &name, e))
                }
                None => not_found(&name),
            }
        }
        (&M::GET, ["deletedkeys", name]) => {
            if let Some(f) = need(s, "get") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            match s.keys.get(&name).filter(|e| e.deleted.is_some()) {
                Some(e) => json_answer(200, s.deleted_bundle(base, &name, e)),
                None => kv_error(
                    404,
                    "KeyNotFound",
                    &format!("Deleted Key not found: {name}"),
                    None,
                ),
            }
        }
        (&M::POST, ["deletedkeys", name, "recover"]) => {
            if let Some(f) = need(s, "recover") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            match s.keys.get_mut(&name).filter(|e| e.deleted.is_some()) {
                Some(e) => {
                    e.deleted = None;
                    let e = &s.keys[&name];
                    let v = e.versions.last().expect("version");
                    json_answer(200, s.bundle(base, &name, v))
                }
                None => kv_error(
                    404,
                    "KeyNotFound",
                    &format!("Deleted Key not found: {name}"),
                    None,
                ),
            }
        }
        (&M::DELETE, ["deletedkeys", name]) => {
            if let Some(f) = need(s, "purge") {
                return f;
            }
            let name = name.to_ascii_lowercase();
            if s.keys.get(&name).is_none_or(|e| e.deleted.is_none()) {
                return kv_error(
                    404,
                    "KeyNotFound",
                    &format!("Deleted Key not found: {name}"),
                    None,
                );
            }
            if s.purge_protection {
                return kv_error(
                    403,
                    "Forbidden",
                    "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Key Vault service will automatically purge it after the retention period has passed.",
                    None,
                );
            }
            s.keys.remove(&name);
            answer(204, &[], Vec::new())
        }
        (&M::POST, ["keys", name, op @ ("wrapkey" | "unwrapkey")])
        | (&M::POST, ["keys", name, _, op @ ("wrapkey" | "unwrapkey")]) => {
            let wrap = *op == "wrapkey";
            let perm = if wrap { "wrapKey" } else { "unwrapKey" };
            if let Some(f) = need(s, perm) {
                return f;
            }
            let name = name.to_ascii_lowercase();
            let version = if segs.len() == 4 { Some(segs[2]) } else { None };
            let v = match find(s, &name, version) {
                Ok(v) => v,
                Err(a) => return a,
            };
            if !v.enabled {
                return kv_error(
                    403,
                    "Forbidden",
                    &format!("Operation {perm} is not allowed on a disabled key."),
                    Some("KeyDisabled"),
                );
            }
            let alg = body.get("alg").and_then(Value::as_str).unwrap_or("");
            let Some(value) = body.get("value").and_then(Value::as_str).and_then(unb64) else {
                return bad_parameter("The parameter value is not valid base64url.");
            };
            let kid = format!("{base}/keys/{name}/{}", v.id);
            let Material::Rsa(k) = &*v.material else {
                return bad_parameter(&format!(
                    "Algorithm {alg} is not supported for key type EC."
                ));
            };
            let out = match (alg, wrap) {
                ("RSA-OAEP-256", true) => k.to_public_key().encrypt(
                    &mut rand_core::UnwrapErr(getrandom::SysRng),
                    Oaep::<sha2::Sha256>::new(),
                    &value,
                ),
                ("RSA-OAEP", true) => k.to_public_key().encrypt(
                    &mut rand_core::UnwrapErr(getrandom::SysRng),
                    Oaep::<sha1::Sha1>::new(),
                    &value,
                ),
                // Blinded, like a vault's (and like byok's own software vaults, so the bench compares
                // transport overhead, not RSA implementations).
                ("RSA-OAEP-256", false) => {
                    k.decrypt_blinded(&mut getrandom::SysRng, Oaep::<sha2::Sha256>::new(), &value)
                }
                ("RSA-OAEP", false) => {
                    k.decrypt_blinded(&mut getrandom::SysRng, Oaep::<sha1::Sha1>::new(), &value)
                }
                _ => {
                    return bad_parameter(&format!(
                        "Algorithm {alg} is not supported for key wrapping."
                    ));
                }
            };
            match out {
                Ok(r) => json_answer(200, json!({ "kid": kid, "value": b64(&r) })),
                Err(_) => bad_parameter("The parameter is incorrect."),
            }
        }
        _ => kv_error(
            400,
            "BadParameter",
            "Unknown operation for this contract server.",
            None,
        ),
    }
}

fn find<'a>(s: &'a State, name: &str, version: Option<&str>) -> Result<&'a Version, Answer> {
    let Some(e) = s.keys.get(name).filter(|e| e.deleted.is_none()) else {
        return Err(not_found(name));
    };
    match version.filter(|v| !v.is_empty()) {
        None => e.versions.last().ok_or_else(|| not_found(name)),
        Some(id) => e
            .versions
            .iter()
            .find(|v| v.id == id)
            .ok_or_else(|| not_found(&format!("{name}/{id}"))),
    }
}

fn add_version(s: &mut State, base: &str, name: &str, m: Material) -> Answer {
    let t = now();
    let v = Version {
        id: random_hex(16),
        material: Arc::new(m),
        enabled: true,
        created: t,
        updated: t,
    };
    let e = s.keys.entry(name.to_owned()).or_insert(Entry {
        versions: Vec::new(),
        deleted: None,
    });
    e.versions.push(v);
    let v = s.keys[name].versions.last().expect("just added");
    json_answer(200, s.bundle(base, name, v))
}
