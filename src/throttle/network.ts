import ipaddr from "ipaddr.js";

/**
 * The network an address belongs to, as the throttle counts it: /24 for IPv4, /56 for IPv6 (a
 * home or office gets a /56 or /64 from its provider, so one attacker rotating through the
 * addresses of their own prefix is still one network). IPv4-mapped IPv6 counts as IPv4.
 */
export function subnetOf(ip: string): string {
  try {
    let addr = ipaddr.parse(ip);
    if (addr.kind() === "ipv6" && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
      addr = (addr as ipaddr.IPv6).toIPv4Address();
    }
    if (addr.kind() === "ipv4") {
      const o = (addr as ipaddr.IPv4).octets;
      return `${o[0]}.${o[1]}.${o[2]}.0/24`;
    }
    const parts = (addr as ipaddr.IPv6).parts; // eight 16-bit groups; /56 = three groups and a half
    const p = [parts[0], parts[1], parts[2], (parts[3] ?? 0) & 0xff00, 0, 0, 0, 0] as number[];
    return `${ipaddr.fromByteArray(new ipaddr.IPv6(p).toByteArray()).toString()}/56`;
  } catch {
    return `other:${ip}`;
  }
}

/**
 * The address as the per-address counters see it: IPv4 as is; IPv6 by its /64, the smallest
 * block a provider hands out (one host gets 2^64 addresses, so counting per /128 counts nothing).
 */
export function addressOf(ip: string): string {
  try {
    let addr = ipaddr.parse(ip);
    if (addr.kind() === "ipv6" && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
      addr = (addr as ipaddr.IPv6).toIPv4Address();
    }
    if (addr.kind() === "ipv4") return addr.toString();
    const parts = (addr as ipaddr.IPv6).parts;
    return `${new ipaddr.IPv6([parts[0], parts[1], parts[2], parts[3], 0, 0, 0, 0] as number[]).toString()}/64`;
  } catch {
    return `other:${ip}`;
  }
}
