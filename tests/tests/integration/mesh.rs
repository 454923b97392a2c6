//! The daemon's mesh: real nodes over loopback TCP discover each other, gossip signed adverts and
//! refuse forged ones.

use std::time::Duration;

use suanli_node::clock::now_ms;
use suanli_protocol::wire::{GossipMessage, WireMessage};
use suanli_protocol::{CapacityAdvert, Keypair, PriceTerms, Resources, Signed};
use suanli_tests::adversary::Adversary;
use suanli_tests::{TestNode, wait_until, with_timeout};

const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_bootstrapped_in_a_chain_all_see_each_other() {
    with_timeout(async {
        let mut nodes: Vec<TestNode> = Vec::new();
        for _ in 0..5 {
            let bootstrap: Vec<_> = nodes.last().map(TestNode::tcp_addr).into_iter().collect();
            nodes.push(TestNode::start(&bootstrap).await);
        }
        wait_until("every node's mesh view holds all 5 nodes", CONVERGE, || {
            nodes.iter().all(|node| node.mesh_size() == 5)
        })
        .await;
        // Each view holds exactly these five ids.
        let mut ids: Vec<_> = nodes.iter().map(|node| node.handle.node_id).collect();
        ids.sort();
        for node in &nodes {
            let seen: Vec<_> = node
                .handle
                .mesh
                .snapshot(now_ms())
                .into_iter()
                .map(|entry| entry.advert.node)
                .collect();
            assert_eq!(seen, ids);
        }
        for node in nodes {
            node.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_the_views_after_its_ttl() {
    with_timeout(async {
        let a = TestNode::start(&[]).await;
        let b = TestNode::start(&[a.tcp_addr()]).await;
        let c = TestNode::start(&[a.tcp_addr()]).await;
        wait_until("all see 3", CONVERGE, || {
            [&a, &b, &c].iter().all(|node| node.mesh_size() == 3)
        })
        .await;
        let gone = c.handle.node_id;
        let stopped_at = std::time::Instant::now();
        c.stop().await;
        wait_until("the stopped node expired everywhere", CONVERGE, || {
            [&a, &b].iter().all(|node| {
                node.handle
                    .mesh
                    .snapshot(now_ms())
                    .iter()
                    .all(|e| e.advert.node != gone)
            })
        })
        .await;
        // Not before its TTL (3 s) minus the age of its last advert (≤ 1 s interval).
        assert!(
            stopped_at.elapsed() >= Duration::from_millis(1_900),
            "{:?}",
            stopped_at.elapsed()
        );
        assert_eq!(a.mesh_size(), 2);
        a.stop().await;
        b.stop().await;
    })
    .await;
}

fn advert_of(key: &Keypair, seq: u64) -> CapacityAdvert {
    CapacityAdvert {
        node: key.node_id(),
        seq,
        issued_at_ms: now_ms(),
        ttl_ms: 30_000,
        region: "forged".into(),
        listen_addrs: vec![],
        total: Resources {
            cpu_cores: 1_000,
            memory_bytes: 1 << 40,
            gpus: vec![],
        },
        free: Resources::default(),
        executors: vec![],
        prices: PriceTerms::default(),
        load_permille: 0,
        software_version: "evil".into(),
        models: Vec::new(),
        cluster: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_adverts_are_rejected() {
    with_timeout(async {
        let victim = TestNode::start(&[]).await;
        let honest = TestNode::start(&[victim.tcp_addr()]).await;
        wait_until("victim sees the honest node", CONVERGE, || {
            victim.mesh_size() == 2
        })
        .await;

        let attacker = Keypair::generate().expect("key");
        let adversary = Adversary::connect(attacker.clone(), victim.tcp_addr()).await;

        // 1. Valid encoding, wrong signature: the attacker's own advert with a flipped signature bit.
        let signed = Signed::sign(&advert_of(&attacker, 1), &attacker).expect("sign");
        let mut bad_signature = GossipMessage::Advert(signed).to_bytes().expect("encode");
        let last = bad_signature.len() - 1;
        bad_signature[last] ^= 0x01;
        // 2. Malformed: not a message at all, and an unknown protocol version.
        let garbage = vec![0xff; 300];
        let mut future_version =
            GossipMessage::Advert(Signed::sign(&advert_of(&attacker, 2), &attacker).expect("sign"))
                .to_bytes()
                .expect("encode");
        future_version[0] = 9;

        let rejected_before = victim.handle.network.gossip_stats().rejected;
        for bytes in [bad_signature, garbage, future_version] {
            // The first rejection graylists the attacker, after which the victim may drop its
            // messages before validation; either way none may be accepted.
            adversary.publish(bytes).await.expect("published");
        }
        wait_until("the victim rejected the forged advert", CONVERGE, || {
            victim.handle.network.gossip_stats().rejected > rejected_before
        })
        .await;

        // The receiver keeps working: a fresh advert from the honest node still arrives.
        let honest_id = honest.handle.node_id;
        let before = victim
            .handle
            .mesh
            .get(&honest_id)
            .expect("honest entry")
            .advert
            .seq;
        honest
            .handle
            .network
            .publish_advert()
            .await
            .expect("publish");
        wait_until("a newer honest advert is accepted", CONVERGE, || {
            victim
                .handle
                .mesh
                .get(&honest_id)
                .is_some_and(|entry| entry.advert.seq > before)
        })
        .await;
        for node in [&victim, &honest] {
            assert!(node.handle.mesh.get(&attacker.node_id()).is_none());
            assert_eq!(node.mesh_size(), 2);
        }
        victim.stop().await;
        honest.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_through_persisted_peers() {
    with_timeout(async {
        let bootstrap = TestNode::start(&[]).await;
        let bootstrap_addr = bootstrap.tcp_addr();
        let b = TestNode::start(std::slice::from_ref(&bootstrap_addr)).await;
        let c = TestNode::start(std::slice::from_ref(&bootstrap_addr)).await;
        wait_until("all see 3", CONVERGE, || {
            [&bootstrap, &b, &c]
                .iter()
                .all(|node| node.mesh_size() == 3)
        })
        .await;
        // c knows b directly (found in the capacity view), not only through the bootstrap node,
        // and knows where b listens (b may have dialled c: its listen addresses then come with
        // identify, and a peer without any cannot be persisted).
        wait_until(
            "c is connected to b and knows its address",
            CONVERGE,
            || {
                let peers = futures::executor::block_on(c.handle.network.peers()).expect("peers");
                peers.iter().any(|peer| {
                    peer.node_id == b.handle.node_id.to_string() && !peer.addrs.is_empty()
                })
            },
        )
        .await;
        let c_id = c.handle.node_id;
        let c_dir = c.stop().await;
        assert!(c_dir.path().join("peers.json").exists());
        bootstrap.stop().await;

        let c = TestNode::start_in(c_dir, &[bootstrap_addr]).await;
        assert_eq!(c.handle.node_id, c_id, "same identity after restart");
        wait_until(
            "restarted c sees b again with its bootstrap peer down",
            CONVERGE,
            || c.handle.mesh.get(&b.handle.node_id).is_some(),
        )
        .await;
        wait_until("b sees the restarted c", CONVERGE, || {
            b.handle
                .mesh
                .get(&c_id)
                .is_some_and(|entry| entry.received_at_ms > 0)
        })
        .await;
        b.stop().await;
        c.stop().await;
    })
    .await;
}

/// 30 nodes with a target of 8 peers and at most 16 connections: while the mesh converges (every
/// view full, through gossip and view sync) no node ever holds more than 16 connections, the peer
/// manager lets go of peers above the target, the mesh stays connected, a fresh advert still
/// reaches everyone, and a job placed on a provider the requester holds no connection to runs
/// (the provider is dialled at the addresses of its advert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_converge_without_exceeding_their_connection_limit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const N: usize = 30;
    const TARGET: u32 = 8;
    const MAX: u32 = 16;
    with_timeout(async {
        let mut nodes: Vec<Arc<TestNode>> = Vec::new();
        for _ in 0..N {
            // Every node joins through node 0: one bootstrap node for the whole mesh (the
            // hotspot case: it is soon full, and must let joiners go once they synced the view).
            let bootstrap: Vec<_> = nodes
                .first()
                .map(|first| first.tcp_addr())
                .into_iter()
                .collect();
            let mut config = suanli_tests::test_config(&bootstrap);
            config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
            config.network.target_peers = TARGET;
            config.network.max_connections = MAX;
            // Production-like advert timing: with the tests' 1 s / 3 s, a loaded machine lets
            // adverts expire between re-publications, and 30 full views rarely hold at once.
            config.network.advert_interval_secs = 5;
            config.network.advert_ttl_secs = 30;
            config.ledger.checkpoint_interval_secs = 5;
            let dir = tempfile::tempdir().expect("temp dir");
            nodes.push(Arc::new(TestNode::start_with(dir, config).await));
        }
        // Sample every node's connection count while the mesh converges.
        let sampling = Arc::new(AtomicBool::new(true));
        let most_seen = Arc::new(AtomicUsize::new(0));
        let sampler = tokio::spawn({
            let nodes = nodes.clone();
            let (sampling, most_seen) = (sampling.clone(), most_seen.clone());
            async move {
                while sampling.load(Ordering::Relaxed) {
                    for node in &nodes {
                        if let Ok(stats) = node.handle.network.connection_stats().await {
                            most_seen.fetch_max(stats.established, Ordering::Relaxed);
                            most_seen.fetch_max(stats.peers, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        wait_until(
            "every view holds all 30 nodes",
            Duration::from_secs(75),
            || nodes.iter().all(|node| node.mesh_size() == N),
        )
        .await;
        // Past the grace period: the excess is let go of.
        tokio::time::sleep(Duration::from_secs(6)).await;
        sampling.store(false, Ordering::Relaxed);
        sampler.await.expect("sampler");
        assert!(
            most_seen.load(Ordering::Relaxed) <= MAX as usize,
            "a node held {} connections",
            most_seen.load(Ordering::Relaxed)
        );
        let mut pruned = 0;
        let mut graph: Vec<Vec<usize>> = vec![Vec::new(); N];
        let ids: Vec<String> = nodes.iter().map(|n| n.handle.node_id.to_string()).collect();
        for (index, node) in nodes.iter().enumerate() {
            let stats = node.handle.network.connection_stats().await.expect("stats");
            assert!(stats.peak_established <= MAX as usize, "{stats:?}");
            assert!(stats.peers >= 1, "node {index} is isolated: {stats:?}");
            pruned += stats.pruned;
            for peer in node.handle.network.peers().await.expect("peers") {
                if let Some(other) = ids.iter().position(|id| *id == peer.node_id) {
                    graph[index].push(other);
                    graph[other].push(index);
                }
            }
        }
        assert!(
            pruned > 0,
            "no node ever went above its target: the test proves nothing"
        );
        let mut reached = [false; N];
        let mut queue = vec![0];
        reached[0] = true;
        while let Some(at) = queue.pop() {
            for &next in &graph[at] {
                if !reached[next] {
                    reached[next] = true;
                    queue.push(next);
                }
            }
        }
        assert!(
            reached.iter().all(|r| *r),
            "the mesh is partitioned: {graph:?}"
        );

        // A fresh advert still reaches every view.
        let publisher = &nodes[N / 2];
        let id = publisher.handle.node_id;
        publisher
            .handle
            .network
            .publish_advert()
            .await
            .expect("publish");
        let seq = publisher.handle.mesh.seq_of(&id).expect("own advert");
        wait_until(
            "the new advert reached every view",
            Duration::from_secs(10),
            || {
                nodes
                    .iter()
                    .all(|node| node.handle.mesh.seq_of(&id).is_some_and(|s| s >= seq))
            },
        )
        .await;

        // A job for a provider the requester is not connected to.
        let requester = &nodes[N - 1];
        let connected: Vec<String> = requester
            .handle
            .network
            .peers()
            .await
            .expect("peers")
            .into_iter()
            .map(|peer| peer.node_id)
            .collect();
        let provider = nodes
            .iter()
            .find(|node| {
                node.handle.node_id != requester.handle.node_id
                    && !connected.contains(&node.handle.node_id.to_string())
            })
            .expect("with at most 16 connections, some node is not a peer");
        let mut job = suanli_tests::wat_job(include_str!("../../../examples/jobs/hello.wat"));
        job.placement.provider = Some(provider.handle.node_id);
        let job_id = requester.submit(job).await;
        let record = requester.wait_job(&job_id, Duration::from_secs(30)).await;
        assert_eq!(
            record.state,
            suanli_node::market::JobState::Succeeded,
            "{record:?}"
        );
        assert_eq!(record.provider, Some(provider.handle.node_id));

        for node in nodes {
            if let Ok(node) = Arc::try_unwrap(node) {
                node.stop().await;
            }
        }
    })
    .await;
}

/// Token streams asked for while a node is still dialling its peer open once the connection is
/// up (libp2p-stream, asked without a connection, loses a stream asked for in the instant one
/// comes up; the node waits for its own dial instead), and one to a node nobody knows an address
/// of fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_streams_asked_for_while_a_peer_is_dialled_open() {
    with_timeout(async {
        let b = TestNode::start(&[]).await;
        for round in 0..100u64 {
            let a = TestNode::start(&[b.tcp_addr()]).await;
            // Asked for right after the start, while the bootstrap dial runs, spread over it.
            let opens = (0..16u64).map(|i| {
                let network = a.handle.network.clone();
                let peer = b.handle.node_id;
                async move {
                    tokio::time::sleep(Duration::from_micros(i * 50 * (round % 8))).await;
                    tokio::time::timeout(Duration::from_secs(15), network.open_token_stream(peer))
                        .await
                }
            });
            for (i, opened) in futures::future::join_all(opens)
                .await
                .into_iter()
                .enumerate()
            {
                match opened {
                    Ok(Ok(_stream)) => {}
                    Ok(Err(error)) => panic!("round {round}, stream {i}: {error}"),
                    Err(_) => panic!("round {round}, stream {i}: not open after 15 s"),
                }
            }
            a.stop().await;
        }
        // A node no address is known for is an error at once, not a wait.
        let stranger = Keypair::generate().expect("key").node_id();
        let opened = tokio::time::timeout(
            Duration::from_secs(5),
            b.handle.network.open_token_stream(stranger),
        )
        .await;
        assert!(matches!(opened, Ok(Err(_))), "{opened:?}");
        b.stop().await;
    })
    .await;
}
