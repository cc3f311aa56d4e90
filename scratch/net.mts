import { subnetOf } from "../src/throttle/network.ts";
for (const ip of ["192.0.2.77", "::ffff:10.1.2.3", "2001:db8:abcd:12ff:1::5", "fe80::1", "garbage"]) console.log(ip, subnetOf(ip));
