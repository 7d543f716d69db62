//! `servicetags::fetch` against a mock Azure Resource Manager on 127.0.0.1 (never anything
//! else). The answers are built from real tags of the Public file in
//! `../shared/testdata/servicetags`, rewritten in the Service Tag Discovery API's shape.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tagwall::servicetags::fetch::{FetchRequest, fetch};
use tagwall::servicetags::{ServiceTags, TagsError, store};

const TOKEN: &str = "tok-123.abc";
const SUB: &str = "00000000-1111-2222-3333-444444444444";
const PICK: [&str; 5] = [
    "AzureMachineLearning",
    "Storage.WestUS2",
    "AzureFrontDoor.Frontend",
    "AzureKeyVault.WestUS2",
    "BatchNodeManagement.WestUS",
];

fn public_values() -> &'static Vec<Value> {
    static V: OnceLock<Vec<Value>> = OnceLock::new();
    V.get_or_init(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/servicetags/ServiceTags_Public_20250908.json");
        let raw = std::fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "test data {} is missing ({e}): these tests need the shared/ directory beside the \
                 repository (shared/testdata/servicetags)",
                p.display()
            )
        });
        let doc: Value = serde_json::from_slice(&raw).unwrap();
        doc["values"].as_array().unwrap().clone()
    })
}

/// One file `values[]` entry rewritten as the API returns it.
fn api_value(name: &str) -> Value {
    let v = public_values()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name}"));
    let p = &v["properties"];
    let change = p["changeNumber"].as_u64().unwrap().to_string();
    json!({
        "name": v["name"], "id": v["id"], "serviceTagChangeNumber": change,
        "properties": {
            "changeNumber": change, "region": p["region"], "state": "GA",
            "systemService": p["systemService"], "addressPrefixes": p["addressPrefixes"],
            "networkFeatures": p["networkFeatures"]
        }
    })
}

fn api_page(names: &[&str], change: &str, next: Option<String>) -> String {
    let mut doc = json!({
        "name": "Public",
        "id": format!("/subscriptions/{SUB}/providers/Microsoft.Network/serviceTags/Public"),
        "type": "Microsoft.Network/serviceTags",
        "changeNumber": change,
        "cloud": "Public",
        "values": names.iter().map(|n| api_value(n)).collect::<Vec<_>>(),
    });
    if let Some(n) = next {
        doc["nextLink"] = n.into();
    }
    doc.to_string()
}

#[derive(Debug, Clone)]
struct Seen {
    target: String,
    authorization: Option<String>,
}

type Handler = Box<dyn Fn(&Seen, u16) -> (u16, String) + Send>;

/// Serves up to `max` requests on 127.0.0.1 (bounded in count and time), recording them.
struct Mock {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

impl Mock {
    fn start(max: usize, handler: Handler) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut served = 0;
            while served < max && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        serve_one(stream, port, &handler, &seen2);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Mock {
            port,
            seen,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn request(&self, token: &str) -> FetchRequest {
        let mut r = FetchRequest::new(SUB, "westus2", token);
        r.endpoint = self.endpoint();
        r
    }

    /// Stops accepting (by connecting to itself until the thread ends) and returns requests.
    fn finish(mut self) -> Vec<Seen> {
        let t = self.thread.take().unwrap();
        while !t.is_finished() {
            // Wake the accept loop with empty connections until it has served `max`.
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join().unwrap();
        let seen = self.seen.lock().unwrap().clone();
        seen.into_iter().filter(|s| !s.target.is_empty()).collect()
    }
}

fn serve_one(stream: TcpStream, port: u16, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // wake-up connection
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(v.trim().to_string());
        }
    }
    let req = Seen {
        target,
        authorization,
    };
    seen.lock().unwrap().push(req.clone());
    let (status, body) = handler(&req, port);
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    let mut rest = Vec::new();
    let _ = reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)));
    let _ = reader.read_to_end(&mut rest);
}

fn first_path() -> String {
    format!(
        "/subscriptions/{SUB}/providers/Microsoft.Network/locations/westus2/serviceTags?api-version=2024-05-01"
    )
}

fn authorised(req: &Seen) -> bool {
    req.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))
}

fn unauthorised() -> (u16, String) {
    (
        401,
        r#"{"error":{"code":"ExpiredAuthenticationToken","message":"The access token expiry UTC time is earlier than current UTC time."}}"#
            .to_string(),
    )
}

fn check_against_file(t: &ServiceTags) {
    assert_eq!(t.cloud, "Public");
    assert_eq!(t.tags.len(), PICK.len());
    for name in PICK {
        let tag = t.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let file = public_values().iter().find(|v| v["name"] == name).unwrap();
        let want: Vec<String> = file["properties"]["addressPrefixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        let got: Vec<String> = tag.prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(
            tag.change_number,
            file["properties"]["changeNumber"].as_u64().unwrap()
        );
    }
    assert_eq!(t.get("Storage.WestUS2").unwrap().prefix_counts(), (50, 1));
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn temp_dir(tag: &str) -> TempDir {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    TempDir(std::env::temp_dir().join(format!(
        "tagwall-fetch-{tag}-{}-{nanos}",
        std::process::id()
    )))
}

#[test]
fn single_page_fetch_and_store() {
    let mock = Mock::start(
        1,
        Box::new(|req, _| {
            if !authorised(req) {
                return unauthorised();
            }
            if req.target != first_path() {
                return (404, format!("unexpected path {}", req.target));
            }
            (200, api_page(&PICK, "370", None))
        }),
    );
    let bytes = fetch(&mock.request(TOKEN)).unwrap();
    let seen = mock.finish();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, first_path());
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok-123.abc"));

    // Normalised to the downloadable-file schema.
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["changeNumber"], 370);
    assert_eq!(doc["cloud"], "Public");
    assert!(doc.get("nextLink").is_none() && doc.get("type").is_none());
    assert!(doc["values"][0]["properties"]["changeNumber"].is_u64());
    assert!(doc["values"][0].get("serviceTagChangeNumber").is_none());

    let parsed = ServiceTags::parse(&bytes, "fetched").unwrap();
    assert_eq!(parsed.change_number, 370);
    check_against_file(&parsed);

    // fetch -> store -> load_latest
    let tmp = temp_dir("single");
    let (path, saved) = store::save(&tmp.0, &bytes, "fetched").unwrap();
    assert!(path.ends_with("servicetags-public-370.json"));
    assert_eq!(saved.tags, parsed.tags);
    let (p2, loaded) = store::load_latest(&tmp.0, "Public").unwrap().unwrap();
    assert_eq!(p2, path);
    check_against_file(&loaded);
    assert_eq!(
        loaded.resolve("Keyvault.WestUS2").unwrap().resolved_name,
        "AzureKeyVault.WestUS2"
    );
}

#[test]
fn next_link_pages_are_merged() {
    let mock = Mock::start(
        2,
        Box::new(|req, port| {
            if !authorised(req) {
                return unauthorised();
            }
            if req.target == first_path() {
                let next =
                    format!("http://127.0.0.1:{port}/page2?api-version=2024-05-01&skipToken=abc");
                (200, api_page(&PICK[..3], "370", Some(next)))
            } else if req.target == "/page2?api-version=2024-05-01&skipToken=abc" {
                (200, api_page(&PICK[3..], "370", None))
            } else {
                (404, format!("unexpected path {}", req.target))
            }
        }),
    );
    let bytes = fetch(&mock.request(TOKEN)).unwrap();
    let seen = mock.finish();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(authorised),
        "every page carries the token: {seen:?}"
    );
    let t = ServiceTags::parse(&bytes, "fetched").unwrap();
    check_against_file(&t);
    assert_eq!(t.names().collect::<Vec<_>>(), PICK.to_vec());
}

#[test]
fn unauthorised_gives_clear_error() {
    // The mock checks the token: a wrong one gets 401.
    let mock = Mock::start(
        1,
        Box::new(|req, _| {
            if authorised(req) {
                (200, api_page(&PICK, "1", None))
            } else {
                unauthorised()
            }
        }),
    );
    let e = fetch(&mock.request("wrong-token")).unwrap_err();
    let seen = mock.finish();
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer wrong-token"));
    let TagsError::Unauthorized {
        status, ref detail, ..
    } = e
    else {
        panic!("{e:?}")
    };
    assert_eq!(status, 401);
    assert!(detail.contains("ExpiredAuthenticationToken"), "{detail}");
    let msg = e.to_string();
    assert!(
        msg.contains("az account get-access-token --resource https://management.azure.com"),
        "{msg}"
    );
    assert!(msg.contains("expired"), "{msg}");

    let mock = Mock::start(1, Box::new(|_, _| (403, "{}".to_string())));
    let e = fetch(&mock.request(TOKEN)).unwrap_err();
    mock.finish();
    assert!(
        matches!(e, TagsError::Unauthorized { status: 403, .. }),
        "{e:?}"
    );
}

#[test]
fn other_errors() {
    // Server error: status and the first 200 characters of the body.
    let long = format!("BODYSTART{}", "x".repeat(1000));
    let body = long.clone();
    let mock = Mock::start(1, Box::new(move |_, _| (503, body.clone())));
    let e = fetch(&mock.request(TOKEN)).unwrap_err();
    mock.finish();
    let TagsError::Http { status, body, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*status, 503);
    assert!(
        body.starts_with("BODYSTART") && body.chars().count() == 200,
        "{body}"
    );

    // Not JSON.
    let mock = Mock::start(1, Box::new(|_, _| (200, "<html>proxy login</html>".into())));
    let e = fetch(&mock.request(TOKEN)).unwrap_err().to_string();
    mock.finish();
    assert!(e.contains("not JSON") && e.contains("<html>"), "{e}");

    // A nextLink to another host is not followed (the token stays here): one request only.
    for next in [
        "https://elsewhere.invalid/page2",
        "http://127.0.0.2:1/page2",
    ] {
        let n = next.to_string();
        let mock = Mock::start(
            1,
            Box::new(move |_, _| (200, api_page(&PICK, "370", Some(n.clone())))),
        );
        let e = fetch(&mock.request(TOKEN)).unwrap_err().to_string();
        let seen = mock.finish();
        assert_eq!(seen.len(), 1);
        assert!(e.contains("not sending the token"), "{e}");
    }

    // changeNumber moving between pages.
    let mock = Mock::start(
        2,
        Box::new(|req, port| {
            if req.target == first_path() {
                (
                    200,
                    api_page(
                        &PICK[..1],
                        "370",
                        Some(format!("http://127.0.0.1:{port}/p2")),
                    ),
                )
            } else {
                (200, api_page(&PICK[1..], "371", None))
            }
        }),
    );
    let e = fetch(&mock.request(TOKEN)).unwrap_err().to_string();
    mock.finish();
    assert!(e.contains("changed while paging"), "{e}");

    // A nextLink that loops.
    let mock = Mock::start(
        1,
        Box::new(|_, port| {
            (
                200,
                api_page(
                    &PICK,
                    "370",
                    Some(format!("http://127.0.0.1:{port}{}", first_path())),
                ),
            )
        }),
    );
    let e = fetch(&mock.request(TOKEN)).unwrap_err().to_string();
    mock.finish();
    assert!(e.contains("loops"), "{e}");

    // Invalid data in a 200 answer is caught by validation before anything is stored.
    let mock = Mock::start(
        1,
        Box::new(|_, _| {
            (
                200,
                api_page(&PICK, "370", None).replace("\"13.66.176.16/28\"", "\"13.66.176.17/28\""),
            )
        }),
    );
    let bytes = fetch(&mock.request(TOKEN)).unwrap();
    mock.finish();
    let tmp = temp_dir("invalid");
    let e = store::save(&tmp.0, &bytes, "fetched").unwrap_err();
    assert!(e.to_string().contains("host bits"), "{e}");
    assert!(store::list(&tmp.0).unwrap().is_empty());
}
