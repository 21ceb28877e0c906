//! Every node's NodePort addresses (`NODE_ADDRS`), by node id.

use std::collections::BTreeMap;

use socklb_common::{Addr, NodeAddrValue, addr_from_ip, node_flags};
use socklb_k8s::model::{
    NodeContext,
    nodes::{NodeInfo, nodeport_addresses},
};

use super::{ApplyReport, Balancer};
use crate::datapath::{Datapath, MapOp};

/// The node addresses as programmed.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeTable {
    pub(super) programmed: BTreeMap<Addr, NodeAddrValue>,
    /// What a previous agent left (for node ids, at the first render).
    pub(super) adopted: BTreeMap<Addr, NodeAddrValue>,
}

impl NodeTable {
    pub fn adopt(programmed: BTreeMap<Addr, NodeAddrValue>) -> Self {
        Self { adopted: programmed.clone(), programmed }
    }

    pub fn programmed_len(&self) -> usize {
        self.programmed.len()
    }
}

impl Balancer {
    /// Programs every node's NodePort addresses. Node ids are kept by name;
    /// a node without one yet takes the id its addresses have in the maps
    /// (a restart), so an unchanged node table writes nothing. Returns
    /// whether everything was written.
    pub fn update_nodes(
        &mut self,
        ctx: &NodeContext,
        nodes: &BTreeMap<String, NodeInfo>,
        dp: &mut dyn Datapath,
        report: &mut ApplyReport,
    ) -> bool {
        let addresses = nodeport_addresses(ctx, nodes);
        let adopted = std::mem::take(&mut self.nodes.adopted);
        for (ip, a) in &addresses {
            if self.node_ids.get(&a.node).is_none()
                && let Some(old) = adopted.get(&addr_from_ip(*ip))
            {
                self.node_ids.adopt(&a.node, old.node_id);
            }
        }
        let mut want: BTreeMap<Addr, NodeAddrValue> = BTreeMap::new();
        for (ip, a) in &addresses {
            let node_id = self.node_ids.id(&a.node);
            let mut flags = 0;
            if a.this_node {
                flags |= node_flags::THIS_NODE;
            }
            if a.loopback {
                flags |= node_flags::HOST_NETNS_ONLY;
            }
            want.insert(addr_from_ip(*ip), NodeAddrValue { node_id, flags });
        }
        let new = want.keys().filter(|a| !self.nodes.programmed.contains_key(*a)).count() as u64;
        self.make_room(crate::capacity::Usage { node_addrs: new, ..Default::default() }, dp, report);
        let mut ops: Vec<MapOp> = want
            .iter()
            .filter(|(a, v)| self.nodes.programmed.get(*a) != Some(*v))
            .map(|(&addr, &value)| MapOp::PutNodeAddr { addr, value })
            .collect();
        ops.extend(
            self.nodes
                .programmed
                .keys()
                .filter(|a| !want.contains_key(*a))
                .map(|&a| MapOp::DeleteNodeAddr(a)),
        );
        let mut complete = true;
        let mut at = 0;
        while at < ops.len() {
            let (done, err) = dp.apply_batch(&ops[at..]);
            for op in &ops[at..at + done] {
                self.programmed_node_addr(op);
            }
            report.ops += done;
            at += done;
            if err.is_some() {
                complete = false;
                at += 1;
            }
        }
        complete
    }

    fn programmed_node_addr(&mut self, op: &MapOp) {
        {
            match *op {
                MapOp::PutNodeAddr { addr, value } => {
                    self.nodes.programmed.insert(addr, value);
                }
                MapOp::DeleteNodeAddr(addr) => {
                    self.nodes.programmed.remove(&addr);
                }
                _ => {}
            }
        }
    }
}
