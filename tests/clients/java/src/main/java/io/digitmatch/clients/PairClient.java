package io.digitmatch.clients;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * A digitmatch producer and verdict reader written against Apache Kafka's Java client only (no
 * digitmatch code), following docs/wire-format.md and docs/clients.md.
 *
 * <pre>
 * PairClient produce BOOTSTRAP TOPIC PAIR_ID FILE NAME=VALUE...
 *     one record: key = PAIR_ID (UTF-8), value = FILE's bytes, one header per NAME=VALUE (value
 *     ASCII, split at the first '='); prints "partition offset" once the broker acknowledged it.
 * PairClient consume BOOTSTRAP TOPIC TIMEOUT_MS PAIR_ID...
 *     reads TOPIC from the beginning of every partition (no consumer group) until a record of
 *     each PAIR_ID was seen; prints "partition TAB key TAB value" per record of those keys.
 *     Exit status 2 if some were not seen within TIMEOUT_MS.
 * </pre>
 */
public final class PairClient {
    private PairClient() {
    }

    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        if (args.length >= 5 && args[0].equals("produce")) {
            produce(args[1], args[2], args[3], Path.of(args[4]), Arrays.copyOfRange(args, 5, args.length));
        } else if (args.length >= 5 && args[0].equals("consume")) {
            System.exit(consume(args[1], args[2], Long.parseLong(args[3]), Arrays.copyOfRange(args, 4, args.length)));
        } else {
            System.err.println("usage: PairClient produce BOOTSTRAP TOPIC PAIR_ID FILE NAME=VALUE...\n"
                    + "       PairClient consume BOOTSTRAP TOPIC TIMEOUT_MS PAIR_ID...");
            System.exit(64);
        }
    }

    static Properties producerSettings(String bootstrap) {
        // docs/clients.md quotes this block.
        Properties settings = new Properties();
        settings.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        settings.put(ProducerConfig.ACKS_CONFIG, "all");
        settings.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        settings.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        settings.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        // No partitioner.class and no explicit partition: the default partitioner hashes the key
        // with murmur2, as kafka-python's does.
        return settings;
    }

    static void produce(String bootstrap, String topic, String pairId, Path file, String[] headers) throws Exception {
        byte[] value = Files.readAllBytes(file);
        ProducerRecord<byte[], byte[]> record =
                new ProducerRecord<>(topic, pairId.getBytes(StandardCharsets.UTF_8), value);
        for (String header : headers) {
            int eq = header.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("header " + header + " is not NAME=VALUE");
            }
            record.headers().add(header.substring(0, eq), header.substring(eq + 1).getBytes(StandardCharsets.US_ASCII));
        }
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerSettings(bootstrap))) {
            RecordMetadata sent = producer.send(record).get();
            System.out.println(sent.partition() + " " + sent.offset());
        }
    }

    static int consume(String bootstrap, String topic, long timeoutMs, String[] pairIds) {
        Properties settings = new Properties();
        settings.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        settings.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        settings.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        settings.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        Set<String> missing = new LinkedHashSet<>(Arrays.asList(pairIds));
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(settings)) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (PartitionInfo info : consumer.partitionsFor(topic, Duration.ofMillis(timeoutMs))) {
                partitions.add(new TopicPartition(topic, info.partition()));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
            while (!missing.isEmpty() && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(200))) {
                    String key = record.key() == null ? "" : new String(record.key(), StandardCharsets.UTF_8);
                    if (Arrays.asList(pairIds).contains(key)) {
                        String value = record.value() == null ? "" : new String(record.value(), StandardCharsets.UTF_8);
                        System.out.println(record.partition() + "\t" + key + "\t" + value);
                        missing.remove(key);
                    }
                }
            }
        }
        if (!missing.isEmpty()) {
            System.err.println("not seen within " + timeoutMs + " ms: " + String.join(" ", missing));
            return 2;
        }
        return 0;
    }
}
