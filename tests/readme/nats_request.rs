// Classify an image over NATS request-reply (the ingress's `clothesline.classify` service).
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(url).await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "image/jpeg");
    let image = std::fs::read("examples/images/shoes.jpg")?;
    let reply = client
        .request_with_headers("clothesline.classify", headers, image.into())
        .await?;
    if let Some(code) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Clothesline-Error"))
    {
        return Err(format!("{code}: {}", String::from_utf8_lossy(&reply.payload)).into());
    }
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    println!("{}", answer["top"]);
    Ok(())
}
