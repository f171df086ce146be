//! PLACEHOLDER until the mock lands.
pub struct MockHandle {
    pub addr: std::net::SocketAddr,
}
impl MockHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn shutdown(self) {}
}
pub fn start(_l: &str) -> std::io::Result<MockHandle> {
    Err(std::io::Error::other("x"))
}
pub fn run_forever(_l: &str) -> std::io::Result<()> {
    Ok(())
}
