//! The contents of `DEVICE_TABLE`: the monitored MACs placed by linear probing from their
//! home slots (`echo_common::DeviceSlot` describes the probe the programs make).

use echo_common::{device_home_slot, mac_word, DeviceSlot, DEVICE_SLOTS, MAX_DEVICES, SLOT_USED};

use crate::device::Mac;

/// Each device's index: the one it has in `old` (a pinned table of an earlier agent), so a
/// restarted agent's counters stay with their device whatever the flag order; a device new
/// to the table gets the lowest index not taken, and a MAC given twice one index. At most
/// `MAX_DEVICES` distinct devices.
pub fn indices(devices: &[Mac], old: &[DeviceSlot]) -> Vec<u32> {
    let kept = |m: &Mac| old.iter().find(|s| s.used == SLOT_USED && s.mac == m.0).map(|s| s.index as u32);
    let mut taken: Vec<u32> = devices.iter().filter_map(kept).collect();
    let mut given: Vec<(Mac, u32)> = Vec::with_capacity(devices.len());
    for m in devices {
        let earlier = given.iter().find(|(g, _)| g == m).map(|&(_, i)| i);
        let index = kept(m).or(earlier).unwrap_or_else(|| {
            let free = (0..MAX_DEVICES).find(|i| !taken.contains(i)).expect("at most MAX_DEVICES devices");
            taken.push(free);
            free
        });
        given.push((*m, index));
    }
    given.into_iter().map(|(_, i)| i).collect()
}

/// The table for `devices` with `indices`: each device at the first free slot from its home,
/// devices placed in MAC order, so the same set gives the same table whatever the flag order
/// (a restarted agent then rewrites no slot that the running programs read).
pub fn build(devices: &[Mac], indices: &[u32]) -> Vec<DeviceSlot> {
    let mut table = vec![DeviceSlot::default(); DEVICE_SLOTS as usize];
    let mut order: Vec<(Mac, u32)> = devices.iter().copied().zip(indices.iter().copied()).collect();
    order.sort();
    order.dedup_by_key(|(m, _)| *m);
    for (mac, index) in order {
        let home = device_home_slot(mac_word(mac.0));
        let slot = (0..MAX_DEVICES)
            .map(|i| ((home + i) & (DEVICE_SLOTS - 1)) as usize)
            .find(|&s| table[s].used != SLOT_USED)
            .expect("at most MAX_DEVICES devices, so a free slot lies within MAX_DEVICES of any home");
        table[slot] = DeviceSlot { mac: mac.0, used: SLOT_USED, index: index as u8 };
    }
    table
}

/// `count` MACs whose probes all start at one slot: the table's worst case, for tests.
pub fn colliding(count: usize) -> Vec<Mac> {
    let home = |m: &Mac| device_home_slot(mac_word(m.0));
    let first = home(&Mac([2, 0, 0, 0, 0, 0]));
    (0u32..).map(|i| Mac([2, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8])).filter(|m| home(m) == first).take(count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The programs' probe (`echo-ebpf/src/accounting.rs`, `device_of`), over the table.
    fn probe(table: &[DeviceSlot], mac: Mac) -> Option<u8> {
        let home = device_home_slot(mac_word(mac.0));
        for i in 0..MAX_DEVICES {
            let s = table[((home + i) & (DEVICE_SLOTS - 1)) as usize];
            let v = u64::from_le_bytes([s.mac[0], s.mac[1], s.mac[2], s.mac[3], s.mac[4], s.mac[5], s.used, s.index]);
            if v & DeviceSlot::PROBE_MASK == DeviceSlot::probe_key(mac_word(mac.0)) {
                return Some(s.index);
            }
            if v & DeviceSlot::USED_BIT == 0 {
                return None;
            }
        }
        None
    }

    #[test]
    fn sixteen_colliding_devices_are_all_found_and_others_are_not() {
        let all = colliding(MAX_DEVICES as usize + 1);
        let (devices, other) = (&all[..MAX_DEVICES as usize], all[MAX_DEVICES as usize]);
        let idx = indices(devices, &[]);
        assert_eq!(idx, (0..MAX_DEVICES).collect::<Vec<_>>());
        let table = build(devices, &idx);
        assert_eq!(table.iter().filter(|s| s.used == SLOT_USED).count(), MAX_DEVICES as usize);
        for (m, i) in devices.iter().zip(&idx) {
            assert_eq!(probe(&table, *m), Some(*i as u8), "{m}");
        }
        assert_eq!(probe(&table, other), None);
        assert_eq!(probe(&table, Mac([0x02, 0xaa, 0, 0, 0, 9])), None);
    }

    #[test]
    fn indices_survive_a_restart_in_another_order_and_the_table_is_the_same() {
        let a = Mac([0x68, 0x54, 0xfd, 1, 2, 3]);
        let b = Mac([0x68, 0x54, 0xfd, 1, 2, 4]);
        let c = Mac([0x02, 0xec, 0x40, 0, 0, 1]);
        let first = build(&[a, b], &indices(&[a, b], &[]));
        // Restarted with the flags swapped: same indices, same table.
        assert_eq!(indices(&[b, a], &first), [1, 0]);
        assert_eq!(build(&[b, a], &[1, 0]), first);
        // A device dropped and one added: the new one takes the free index.
        assert_eq!(indices(&[c, b], &first), [0, 1]);
        assert_eq!(indices(&[b, c], &first), [1, 0]);
        // A MAC given twice: one index, one slot.
        assert_eq!(indices(&[c, a, c], &[]), [0, 1, 0]);
        assert_eq!(build(&[c, a, c], &[0, 1, 0]).iter().filter(|s| s.used == SLOT_USED).count(), 2);
    }
}
